"""The suite's own process setup (tests/conftest.py): each xdist worker on its share of the CPUs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import PINNED_CPUS, SUITE_CPUS, worker_cpus


def test_worker_shares():
    assert worker_cpus("gw0", 2, [0, 1]) == [0]
    assert worker_cpus("gw1", 2, [1, 0]) == [1]
    assert worker_cpus("gw1", 2, [4, 5, 6, 7]) == [6, 7]
    assert worker_cpus("gw2", 3, list(range(6))) == [4, 5]
    assert worker_cpus("gw0", 2, [0, 1, 2]) is None  # uneven: not pinned
    assert worker_cpus("gw0", 1, [0, 1]) is None  # one worker: the whole machine
    assert worker_cpus("", 2, [0, 1]) is None  # not an xdist worker


@pytest.mark.skipif(PINNED_CPUS is None, reason="not an xdist worker with an even CPU share")
def test_worker_and_its_subprocesses_run_on_its_share():
    assert sorted(os.sched_getaffinity(0)) == PINNED_CPUS
    assert len(PINNED_CPUS) == len(SUITE_CPUS) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == str(PINNED_CPUS)
