"""What the JSON records of measured figures say about the machine (ssd_jax.provenance)."""

from __future__ import annotations

import pathlib

import pytest

from conftest import REQUIRE_FIXTURES
from ssd_jax import provenance

CPUINFO = pathlib.Path("/proc/cpuinfo")


def cpuinfo_flags() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.parametrize("lscpu", [True, False], ids=["lscpu", "proc-cpuinfo"])
def test_cpu_flags_are_the_speed_flags_the_cpu_has(monkeypatch, lscpu):
    if not CPUINFO.is_file():  # not Linux: nothing to compare with; CI (Linux) must have it
        (pytest.fail if REQUIRE_FIXTURES else pytest.skip)("no /proc/cpuinfo (not Linux)")
    if not lscpu:  # where lscpu is missing, /proc/cpuinfo says the same
        monkeypatch.setattr(provenance, "_lscpu", lambda: {})
    flags = provenance.cpu_flags()
    assert flags == sorted(cpuinfo_flags() & provenance.SPEED_FLAGS)
    assert provenance.machine()["flags"] == flags
