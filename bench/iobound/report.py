"""The I/O-bound phase's table, its targets (PASS/MISS) and its section of BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.iobound.probe import WAIT
from bench.iobound.systems import ROWS

BEGIN, END = "<!-- iobound:begin -->", "<!-- iobound:end -->"
FIELDS = (
    "rate",
    "rss_mb",
    "pss_mb",
    "rss_idle_mb",
    "done",
    "seconds",
    "duplicates",
    "processes",
    "returned_after",
)


def machine(server: str) -> dict[str, Any]:
    with psycopg.connect(f"{server}/postgres") as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    versions = {"python": platform.python_version(), "postgresql": pg}
    for dist in ["Django", "celery", "redis", "procrastinate", "django-q2", "psycopg"]:
        versions[dist] = metadata.version(dist)
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "load": os.getloadavg()[0],
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration, the median of each figure over the runs that measured it."""
    merged: dict[str, Any] = {"meta": dict(runs[-1]["meta"]), "runs": len(runs)}
    merged["meta"]["loads"] = [run["meta"]["load"] for run in runs]
    keys = {k for run in runs for k in run if k != "meta"}
    for key in keys:
        measured = [run[key] for run in runs if "rate" in run.get(key, {})]
        if not measured:
            merged[key] = {"error": next(run[key]["error"] for run in runs if key in run)}
            continue
        entry: dict[str, Any] = {"runs": len(measured), "note": measured[-1].get("note", "")}
        for field in FIELDS:
            values = [m[field] for m in measured if m.get(field) is not None]
            entry[field] = statistics.median(values) if values else None
        entry["duplicates"] = sum(m.get("duplicates", 0) for m in measured)
        merged[key] = entry
    return merged


def _runs(r: dict[str, Any]) -> str:
    counts = sorted({e["runs"] for k, e in r.items() if isinstance(e, dict) and "runs" in e})
    if not counts:
        return f"{r['runs']} run(s)"
    low, high = counts[0], counts[-1]
    return f"{low} runs" if low == high else f"{low} to {high} runs (each row's rounds)"


def _cell(r: dict[str, Any], key: str, system: str, c: int) -> str:
    entry = r.get(key)
    if entry is None:
        if system == "ours" and c > 1 and not r["meta"].get("ours_concurrency", True):
            return "n/a (no `--concurrency`)"
        return "not run"
    if "error" in entry:
        return "failed"
    if entry["done"] == 0:
        return f"n/a ({entry['note'] or 'no body ran'})"
    ideal = c / WAIT
    text = f"{entry['rate']:,.0f} ({entry['rate'] / ideal:.0%})"
    if entry.get("note"):
        text += f" [{entry['note']}]"
    if entry.get("duplicates"):
        text += f" {entry['duplicates']} ran twice"
    return text


def _memory(r: dict[str, Any], key: str) -> str:
    entry = r.get(key)
    if not entry or "rss_mb" not in entry or entry["rss_mb"] is None:
        return "n/a"
    text = f"{entry['rss_mb']:,.0f}"
    if entry.get("processes", 1) > 1:
        pss = entry.get("pss_mb")
        text += (f" / {pss:,.0f}" if pss else "") + f" ({entry['processes']:.0f} processes)"
    return text


def _rate(r: dict[str, Any], key: str) -> float | None:
    entry = r.get(key) or {}
    return entry.get("rate") if entry.get("done") else None


def _per_second(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:,.0f}/s"


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The targets of issue 11, each with its figure and verdict (None: not measured)."""
    out: list[tuple[str, str, bool | None]] = []
    for mode in ("sync", "async"):
        rate = _rate(r, f"ours.{mode}.50")
        out.append(
            (
                f"ours, {mode}, concurrency 50: >= 80% of the ideal 1,000/s",
                "n/a" if rate is None else f"{rate:,.0f}/s",
                None if rate is None else rate >= 800,
            )
        )
    for mode, peer, name in [
        ("sync", "celery-threads.sync.50", "Celery threads pool (`delay_on_commit`, from the commit)"),
        ("sync", "celery-threads.backlog.50", "Celery threads pool (the worker alone)"),
        ("async", "procrastinate.async.50", "procrastinate (async task)"),
    ]:
        ours, theirs = _rate(r, f"ours.{mode}.50"), _rate(r, peer)
        figure = f"{_per_second(ours)} vs {_per_second(theirs)}"
        ok = None if ours is None or theirs is None else ours >= theirs
        out.append((f"ours, {mode}, concurrency 50: >= {name} at 50", figure, ok))
    memories = [(r.get(f"ours.{m}.50") or {}).get("rss_mb") for m in ("sync", "async")]
    memories = [m for m in memories if m]
    worst = max(memories) if memories else None
    out.append(
        (
            "ours, concurrency 50: worker RSS < 150 MB",
            "n/a" if worst is None else f"{worst:,.0f} MB",
            None if worst is None else worst < 150,
        )
    )
    return out


def markdown(r: dict[str, Any]) -> str:
    meta = r["meta"]
    sizes = meta["sizes"]
    # Every concurrency of every run merged (a run with --concurrency may have measured fewer).
    cs = sorted({int(k.rsplit(".", 1)[1]) for k in r if k.count(".") == 2} | set(sizes["concurrency"]))
    lines = [
        "### I/O-bound receivers: each waits 50 ms, one worker process\n",
        "Produced by `make bench-io` (`bench/iobound/`; `make bench` runs it too): "
        f"{sizes['events']:,} jobs committed in one transaction, drained by one worker at concurrency N; "
        f"events per second (share of the ideal N / {WAIT} s), the median of {_runs(r)}. "
        f"A rate counts bodies that ran to their end (each reports over UDP), over at most "
        f"{sizes['cap']:.0f} s from the commit (concurrency 1 would take {sizes['events'] * WAIT:.0f} s).\n",
        "| system | " + " | ".join(f"N = {c}" for c in cs) + " |",
        "|---|" + "---|" * len(cs),
    ]
    for system, mode, label in ROWS:
        if not any(k.startswith(f"{system}.{mode}.") for k in r) and system != "ours":
            continue
        cells = [_cell(r, f"{system}.{mode}.{c}", system, c) for c in cs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    publishes = [
        f"{(r.get(f'celery-threads.sync.{c}') or {}).get('returned_after') or float('nan'):.1f} s at N = {c}"
        for c in cs
        if (r.get(f"celery-threads.sync.{c}") or {}).get("returned_after")
    ]
    if publishes:
        lines.append(
            "\nCelery's `delay_on_commit` publishes each message after the commit, one round trip "
            f"each, from the sending process: the {sizes['events']:,} publishes took "
            + ", ".join(publishes)
            + ' (threads pool rows; the worker consumes while they go on). The row "the worker '
            "alone\" pauses the worker's consumer (Celery's remote control, `cancel_consumer`), "
            "publishes the whole backlog, then starts the clock and resumes it (`add_consumer`)."
        )
    lines += [
        "\nWorker memory at the end of the drain, MB: RSS of the whole worker process tree "
        "(psutil, the process and its children summed), peak of samples every 0.5 s; for "
        "process pools also PSS (shared pages split between the processes that share them).\n",
        "| system | " + " | ".join(f"N = {c}" for c in cs) + " |",
        "|---|" + "---|" * len(cs),
    ]
    for system, mode, label in ROWS:
        if not any(k.startswith(f"{system}.{mode}.") for k in r):
            continue
        lines.append(f"| {label} | " + " | ".join(_memory(r, f"{system}.{mode}.{c}") for c in cs) + " |")
    lines += ["\n| target | figure | verdict |", "|---|---|---|"]
    for name, figure, ok in targets(r):
        lines.append(f"| {name} | {figure} | {'n/a' if ok is None else 'PASS' if ok else 'MISS'} |")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines.append(
        f"\nMeasured {meta['date']} on {meta['cores']} cores, {meta['memory_gb']} GB "
        f"(load averages {_loads(meta)} at the starts of the runs: other jobs shared the machine); "
        f"{versions}."
    )
    return "\n".join(lines)


def _loads(meta: dict[str, Any]) -> str:
    loads = meta.get("loads") or [meta["load"]]
    low, high = min(loads), max(loads)
    return f"{low:.1f}" if low == high else f"{low:.1f} to {high:.1f}"


def write_section(path: Path, table: str) -> None:
    """Put the table between the phase's markers in ``path`` (added before the first
    "## " heading after the tables when the markers are not there yet)."""
    section = f"{BEGIN}\n{table}\n\n{BOUNDS}\n{RERUN}\n{END}"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    elif "\n## How each figure is measured" in text:
        head, _, tail = text.partition("\n## How each figure is measured")
        text = head + "\n" + section + "\n\n## How each figure is measured" + tail
    else:
        text += "\n" + section + "\n"
    path.write_text(text)


def kept(old: str, new: str) -> str:
    """``new`` with the phase's section of ``old`` carried over (``make bench`` rewrites
    BENCHMARKS.md whole; the phase's table is written by its own step)."""
    if BEGIN not in old or END not in old or BEGIN in new:
        return new
    section = BEGIN + old.partition(BEGIN)[2].partition(END)[0] + END
    marker = "\n## How each figure is measured"
    if marker in new:
        head, _, tail = new.partition(marker)
        return head + "\n" + section + "\n" + marker + tail
    return new + "\n" + section + "\n"


BOUNDS = """What bounds the peers in this phase (read with the table; the two cores are shared by the
worker, the sender, PostgreSQL and Redis, so CPU per job sets every ceiling well below the
ideal at N = 50 and 100):
- Celery: each job costs the worker a Redis round trip and its own bookkeeping in Python; with
  `delay_on_commit` the sender publishes the backlog one message at a time after the commit,
  and the threads pool rows keep pace with those publishes. The prefork pool at N = 100 runs
  100 processes on 2 cores (about 70 MB of RSS each, half of it shared); it fits in memory (no
  cap was needed on 24 GB), but it is slower than at N = 10.
- procrastinate: one job per fetch, and a fetch and a finish (each committed) per job, through
  the worker connector's pool of 4 connections (psycopg_pool's default) shared by all N
  sub-workers; its sync tasks also go through asgiref's `sync_to_async` thread pool. Its rate
  flattens well before N = 50.
- django-q2: one pusher process takes the jobs from its ORM broker one at a time (`bulk` 1)
  and hands them to the N worker processes; results are saved one by one by the monitor.
"""

RERUN = """Rerun: `make bench-io` (the phase alone, about 30 minutes for 3 runs; `make bench` runs it
too), `.venv-bench/bin/python -m bench.iobound --help` for its options (`--runs`, `--only`,
`--max-procs`), `.venv-bench/bin/python -m bench.iobound --report bench/results/iobound-*.json`
to take the medians of saved runs. Each system's worker runs with its documented defaults but
for the concurrency: ours `run_outbox --concurrency N`; Celery 5 with its Redis broker, the
task enqueued with `delay_on_commit` (published after the commit: the publishes are part of the
measured time), `celery worker --pool threads|prefork --concurrency N` (prefetch multiplier 4);
procrastinate `manage.py procrastinate worker --concurrency N` (its sync tasks run through
asgiref's `sync_to_async`, in the event loop's default thread pool); django-q2 `qcluster` with
`Q_CLUSTER["workers"] = N` and its ORM broker on the same database (bulk 1, poll 0.2 s).
Process pools (Celery prefork, django-q2) are capped by `--max-procs` (default 100) and by the
free memory at about 80 MB a process; a capped cell says so."""
