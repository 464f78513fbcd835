"""The I/O-bound phase's driver: start a worker, commit a backlog, count finished bodies.

``python -m bench.iobound --pg postgres://USER@HOST:5432/PREFIX`` recreates the databases
PREFIX_io_ours, PREFIX_io_celery, PREFIX_io_procrastinate and PREFIX_io_q2, measures every
configuration ``--runs`` times (round after round, so that the shared machine's noise falls on
all of them alike), saves each round to bench/results/iobound-*.json, and writes the median
table into BENCHMARKS.md. ``--report FILE ...`` rewrites the table from saved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis as redis_client

from bench.iobound import report
from bench.iobound.collector import Collector
from bench.iobound.procs import MB, pss, rss, stop, tree, wait_idle
from bench.iobound.systems import (
    DATABASES,
    PROCESS_POOLS,
    PY,
    ROOT,
    ROWS,
    TRUNCATE,
    UNFINISHED,
    Config,
    celery_consuming,
    celery_keys,
    celery_unfinished,
    database,
    ours_has_concurrency,
    worker_command,
)

FULL = {"events": 2000, "concurrency": [1, 10, 50, 100], "cap": 15.0, "runs": 3}
SMOKE = {"events": 50, "concurrency": [1, 10], "cap": 4.0, "runs": 1}
# The smoke run keeps to what CI can afford: ours, and one peer of each kind at the top size.
SMOKE_ROWS = {("ours", "sync"), ("ours", "async"), ("celery-threads", "sync"), ("procrastinate", "async")}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class IOBench:
    def __init__(self, pg: str, redis_url: str, sizes: dict[str, Any], max_procs: int) -> None:
        self.server, _, prefix = pg.rstrip("/").rpartition("/")
        self.prefix = f"{prefix}_io"
        self.redis_url = redis_url
        os.environ["BENCH_REDIS"] = redis_url  # for Celery's remote control, from this process
        self.redis = redis_client.Redis.from_url(redis_url)
        self.sizes = sizes
        self.max_procs = max_procs
        self.collector = Collector()
        self.logs = ROOT / "bench" / "logs"
        self.logs.mkdir(exist_ok=True)

    def url(self, system: str) -> str:
        return f"{self.server}/{self.prefix}_{database(system)}"

    def env(self, system: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_DATABASE_URL": self.url(system),
            "BENCH_REDIS": self.redis_url,
            "BENCH_IO_PORT": str(self.collector.port),
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "bench.iobound.settings",
            **extra,
        }

    def sql(self, system: str, statement: str) -> Any:
        with psycopg.connect(self.url(system), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else None

    def setup(self) -> None:
        log(f"creating databases {self.prefix}_* and migrating")
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as conn:
            for name in DATABASES:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix}_{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.prefix}_{name}"')
        procs = [
            subprocess.Popen([PY, "-m", "django", "migrate", "-v0"], env=self.env(name), cwd=ROOT)
            for name in DATABASES
        ]
        if any(p.wait() for p in procs):
            raise SystemExit("migrate failed")
        self.concurrent = ours_has_concurrency(self.env("ours"))
        if not self.concurrent:
            log("run_outbox has no --concurrency here: ours is measured at concurrency 1 only")

    def reset(self, system: str) -> None:
        if system.startswith("celery"):
            keys = celery_keys(self.redis)
            if keys:
                self.redis.delete(*keys)
        else:
            self.sql(system, TRUNCATE[system])
            self.sql(system, "VACUUM ANALYZE")

    def unfinished(self, system: str, conn: psycopg.Connection) -> int:
        if system.startswith("celery"):
            return celery_unfinished(self.redis)
        return conn.execute(UNFINISHED[system]).fetchone()[0]

    def workers_for(self, config: Config) -> tuple[int, str]:
        """The worker count to start, and a note when it was capped."""
        n = config.concurrency
        if config.system not in PROCESS_POOLS:
            return n, ""
        # About 80 MB of RSS for each process (half of it shared after the fork), kept within
        # what the machine has free: the phase must not push neighbours into swap.
        fits = int(psutil.virtual_memory().available / (80 * MB))
        capped = min(n, self.max_procs, fits)
        return capped, f"{capped} processes (capped from {n})" if capped < n else ""

    def measure(self, config: Config) -> dict[str, Any]:
        """Start the worker, commit the backlog when it is idle, count finished bodies."""
        n, cap = self.sizes["events"], self.sizes["cap"]
        self.reset(config.system)
        workers, note = self.workers_for(config)
        command, extra = worker_command(config, workers)
        token = self.collector.start()
        env = self.env(config.system, BENCH_IO_TOKEN=token, **extra)
        with open(self.logs / f"iobound-{config.system}.log", "a") as out:
            out.write(f"\n=== {config.key}: {' '.join(command)}\n")
            out.flush()
            proc = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_idle(proc)
            idle_rss = rss(tree(proc.pid))
            backlog = config.mode == "backlog"
            if backlog:
                celery_consuming(False)
            fill = subprocess.Popen(
                [PY, "-m", "bench.iobound.enqueue", config.system, config.mode, str(n)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            if fill.stdout.readline().strip() != "ready":
                raise RuntimeError(f"enqueue failed for {config.key}")
            fill.stdin.write("\n")
            fill.stdin.flush()
            committed = json.loads(fill.stdout.readline())
            fill.wait(timeout=120)
            began = committed["commit_at"]
            if backlog:
                # The clock starts when the worker may consume: its own rate, not the producer's.
                began = time.time()
                celery_consuming(True)
            peak, procs, quiet_since = idle_rss, 1, None
            with psycopg.connect(self.url(config.system), autocommit=True, connect_timeout=10) as conn:
                next_sample = 0.0
                while True:
                    time.sleep(0.02)
                    now = time.time()
                    done = len(self.collector.seen)
                    if done >= n or now - began > cap:
                        break
                    if now >= next_sample:
                        next_sample = now + 0.5
                        members = tree(proc.pid)
                        peak, procs = max(peak, rss(members)), max(procs, len(members))
                        # Nothing left to claim and no body finished for a second: the
                        # worker marked the rest done without running it (or lost it).
                        quiet = now - max(self.collector.last, began) > 1.0
                        if quiet and self.unfinished(config.system, conn) == 0:
                            quiet_since = now
                            break
            members = tree(proc.pid)
            peak = max(peak, rss(members))
            proportional = pss(members)
        finally:
            stop(proc)
        done, last = len(self.collector.seen), self.collector.last
        elapsed = (last - began) if done >= n else (now - began)
        result = {
            "rate": done / elapsed if done and elapsed > 0 else 0.0,
            "done": done,
            "events": n,
            "seconds": elapsed,
            "duplicates": self.collector.duplicates,
            "rss_idle_mb": idle_rss,
            "rss_mb": peak,
            "pss_mb": proportional,
            "processes": procs,
            "workers": workers,
            "note": note,
            "returned_after": committed["returned_at"] - began,
        }
        if quiet_since and done < n:
            result["note"] = (note + "; " if note else "") + f"queue empty with {n - done} bodies never run"
        log(
            f"{config.key}: {result['rate']:.0f}/s ({done} of {n} in {elapsed:.1f}s), "
            f"RSS {peak:.0f} MB over {procs} process(es), PSS "
            f"{'n/a' if proportional is None else f'{proportional:.0f} MB'}"
            + (f", {result['duplicates']} duplicates" if result["duplicates"] else "")
            + (f" [{result['note']}]" if result["note"] else "")
        )
        return result

    def configs(self, rows: list[tuple[str, str]]) -> list[Config]:
        out = []
        for system, mode in rows:
            for c in self.sizes["concurrency"]:
                if system == "ours" and c > 1 and not self.concurrent:
                    continue
                out.append(Config(system, mode, c))
        return out

    def run(self, rows: list[tuple[str, str]], save: Path) -> list[dict[str, Any]]:
        self.setup()
        try:
            self.redis.ping()
        except redis_client.RedisError as exc:
            log(f"Redis at {self.redis_url} unreachable ({exc}): Celery not measured")
            rows = [(s, m) for s, m in rows if not s.startswith("celery")]
        runs: list[dict[str, Any]] = []
        for round_ in range(self.sizes["runs"]):
            results: dict[str, Any] = {"meta": self.meta()}
            for config in self.configs(rows):
                try:
                    results[config.key] = self.measure(config)
                except Exception as exc:  # noqa: BLE001 - reported as n/a, the run goes on
                    log(f"{config.key}: failed ({type(exc).__name__}: {str(exc)[:200]})")
                    results[config.key] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            runs.append(results)
            path = save.with_name(f"{save.stem}-{round_ + 1}.json")
            path.write_text(json.dumps(results, indent=1, sort_keys=True))
            log(f"round {round_ + 1} saved to {path}")
        if any(s.startswith("celery") for s, _ in rows):
            self.reset("celery-threads")  # leave none of our keys behind in Redis
        return runs

    def meta(self) -> dict[str, Any]:
        return {**report.machine(self.server), "sizes": self.sizes, "ours_concurrency": self.concurrent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--pg", default=os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432/bench")
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--runs", type=int, help="rounds to take the median of (default 3)")
    parser.add_argument("--events", type=int, help="jobs per measurement (default 2000)")
    parser.add_argument("--concurrency", help="comma-separated, default 1,10,50,100 (smoke: 1,10)")
    parser.add_argument("--only", help="systems or system.mode, e.g. ours,celery-threads.backlog")
    parser.add_argument(
        "--max-procs",
        type=int,
        default=int(os.environ.get("BENCH_IO_MAX_PROCS", "100")),
        help="most processes for process pools (Celery prefork, django-q2)",
    )
    parser.add_argument("--report", nargs="+", type=Path, help="rewrite the table from saved runs")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    if args.report:
        runs = [json.loads(p.read_text()) for p in args.report]
    else:
        sizes = dict(SMOKE if args.smoke else FULL)
        if args.runs:
            sizes["runs"] = args.runs
        if args.events:
            sizes["events"] = args.events
        if args.concurrency:
            sizes["concurrency"] = [int(c) for c in args.concurrency.split(",")]
        rows = [(s, m) for s, m, _ in ROWS if not args.smoke or (s, m) in SMOKE_ROWS]
        if args.only:
            only = args.only.split(",")
            rows = [(s, m) for s, m in rows if s in only or f"{s}.{m}" in only]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        save = results_dir / f"{'iobound-smoke' if args.smoke else 'iobound'}-{stamp}.json"
        runs = IOBench(args.pg, args.redis, sizes, args.max_procs).run(rows, save)
    merged = report.median_of(runs)
    table = report.markdown(merged)
    print(table)
    output = results_dir / "iobound-smoke.md" if args.smoke else args.output
    report.write_section(output, table)
    print(f"\nwrote {output}")
