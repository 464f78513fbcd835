"""The suite on a shared machine: it restarts no server unless told to, and touches only the
Redis keys of its own test cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import DISRUPTIVE_VARIABLE, REDIS_PREFIX, ROOT, delete_test_keys

RESTART_TEST = "tests/test_chaos.py::test_a_postgresql_restart_amid_kills_loses_nothing"


@pytest.mark.processes
def test_the_postgresql_restart_test_is_skipped_unless_opted_in():
    env = {k: v for k, v in os.environ.items() if k != DISRUPTIVE_VARIABLE}
    # Collected and set up in a child pytest: skipif markers are evaluated at set-up, and
    # the skip is the first thing that happens, before any database or server is touched.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", RESTART_TEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 skipped" in result.stdout, result.stdout[-2000:]
    assert "passed" not in result.stdout and "failed" not in result.stdout
    if "PostgreSQL only" not in result.stdout:  # on PostgreSQL, the opt-in is the reason
        assert DISRUPTIVE_VARIABLE in result.stdout, result.stdout[-2000:]


def test_the_tests_redis_cleanup_deletes_only_their_cluster_keys(redis_db):
    theirs, ours = f"someone-else:{uuid.uuid4().hex}", f"{REDIS_PREFIX}{uuid.uuid4().hex}"
    try:
        redis_db.set(theirs, "keep me", ex=60)
        redis_db.set(ours, "test leftovers", ex=60)
        assert delete_test_keys(redis_db) >= 1
        assert redis_db.get(theirs) == b"keep me"
        assert redis_db.get(ours) is None
    finally:
        redis_db.delete(theirs, ours)
