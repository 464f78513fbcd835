"""The worker under measure, seen from outside: its process tree, memory, start-up and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

MB = 2**20


def tree(pid: int) -> list[psutil.Process]:
    """The process and its children, recursively (prefork pools, django-q2's cluster)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss(procs: list[psutil.Process]) -> float:
    """Resident memory of ``procs`` summed, in MB (shared pages counted in each process)."""
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / MB


def pss(procs: list[psutil.Process]) -> float | None:
    """Proportional memory of ``procs`` summed, in MB (shared pages split between sharers)."""
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            return None
    return total / MB


def wait_idle(proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Wait until the worker's process tree stops using CPU: its start-up is over."""
    time.sleep(1.0)
    deadline = time.time() + timeout
    last = -1.0
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited during start-up: {proc.args}")
        members = tree(proc.pid)
        total = 0.0
        for p in members:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        # Idle workers still poll (q2's every 0.2 s, in each process): a little CPU per
        # process is allowed.
        if last >= 0 and total - last < 0.03 + 0.003 * len(members):
            return
        last = total
        time.sleep(0.5)
    raise RuntimeError(f"the worker was still busy starting after {timeout:.0f}s: {proc.args}")


def stop(proc: subprocess.Popen) -> None:
    # SIGTERM, then SIGKILL: a capped run leaves a backlog that no worker should finish.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    # Leftovers of the group (prefork children, q2's workers) must not outlive the step.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
