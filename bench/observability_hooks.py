"""What the worker's observability hooks cost per event, without a database (issue 15).

Times, for one claimed row, what every receiver call goes through: ``with
observability.watching(ready): pass`` and ``observability.done(row)``, in four processes:
neither library importable, ``prometheus_client`` only, ``opentelemetry-api`` only (no SDK:
its no-op spans), and both. Usage, from the repository root::

    .venv/bin/python bench/observability_hooks.py
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

MODES = ("none", "metrics", "otel", "both")


def child(mode: str, n: int = 50_000) -> float:
    if mode in ("none", "metrics"):
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    if mode in ("none", "otel"):
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from outbox import observability, queries
    from outbox.execution import Prepared
    from outbox.registry import get_receiver

    path = "tests.testapp.observed.observed_ok"
    now = datetime.datetime.now(datetime.timezone.utc)
    row = queries.Claimed(1, "s", path, "{}", 1, 8, False, "observed", None, now, None)
    ready = Prepared(get_receiver(path), None, None, {}, row)
    started = time.perf_counter()
    for _ in range(n):
        with observability.watching(ready):
            pass
        observability.done(row)
    return (time.perf_counter() - started) / n


def main() -> None:
    if len(sys.argv) > 1:
        print(child(sys.argv[1]))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, mode],
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"{mode:>8}: {float(out.stdout.strip().splitlines()[-1]) * 1e6:6.2f} us per event")


if __name__ == "__main__":
    main()
