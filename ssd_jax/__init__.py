"""ssd_jax: mmdetection's SSD family (SSD300, SSD512, SSDLite) in JAX/Flax."""
import os

# XLA's CPU scheduler runs independent operations concurrently, and each of them also splits its
# work over the thread pool: on few cores they contend, and the SSDLite train step ran 1.4×
# slower (benchmark.py, 2 cores). An explicit setting in XLA_FLAGS is left as it is. Takes effect
# when ssd_jax is imported before JAX's first computation.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=false".strip()

from ssd_jax.detector import Detector  # noqa: E402

__all__ = ["Detector"]
