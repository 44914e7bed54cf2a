"""ssd_jax's XLA CPU flags (``ssd_jax/__init__.py``) and the warning when they come too late."""

from __future__ import annotations

import subprocess
import sys

from conftest import subprocess_env

FIRST_JAX = "import jax; jax.numpy.zeros(1).block_until_ready(); import ssd_jax"
FIRST_SSD_JAX = "import ssd_jax, jax; jax.numpy.zeros(1).block_until_ready()"
# importing JAX first is fine: XLA reads the flags when the first computation starts
JAX_IMPORTED_FIRST = "import jax; import ssd_jax; jax.numpy.zeros(1).block_until_ready()"


def run(code: str) -> subprocess.CompletedProcess:
    env = subprocess_env(fast_compile=False)
    env.pop("XLA_FLAGS", None)  # as a user's shell: no flags of its own
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_flags_imported_too_late_are_named_in_a_warning():
    late = run(FIRST_JAX)
    assert late.returncode == 0, late.stderr
    assert "JAX started its CPU backend before ssd_jax was imported" in late.stderr
    assert "--xla_cpu_enable_concurrency_optimized_scheduler" in late.stderr
    for code in (FIRST_SSD_JAX, JAX_IMPORTED_FIRST):
        in_time = run(code)
        assert in_time.returncode == 0, in_time.stderr
        assert "before ssd_jax was imported" not in in_time.stderr, code
