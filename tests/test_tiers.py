"""The fast tier (``make test-fast``, ``-m "not slow"``) starts no process: a test that starts one
without the ``processes`` marker fails, and the fixtures that start workers mark their tests."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_an_unmarked_test_that_starts_a_process_fails_naming_the_marker():
    with pytest.raises(AssertionError, match=r"without @pytest\.mark\.processes"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_a_test_using_the_worker_process_fixture_is_in_the_slow_tier(request, worker_process):
    assert request.node.get_closest_marker("processes") is not None
    assert request.node.get_closest_marker("slow") is not None


@pytest.mark.processes
def test_a_marked_test_may_start_a_process_and_is_in_the_slow_tier(request):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert request.node.get_closest_marker("slow") is not None
