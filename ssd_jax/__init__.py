"""ssd_jax: mmdetection's SSD family (SSD300, SSD512, SSDLite) in JAX/Flax."""

import os
import sys
import warnings
from importlib import metadata

# XLA CPU flags, each set unless XLA_FLAGS already names it. They take effect when ssd_jax is
# imported before JAX's first computation.
_XLA_CPU_FLAGS = {
    # XLA's CPU scheduler runs independent operations concurrently, and each of them also
    # splits its work over the thread pool: on few cores they contend, and the SSDLite train
    # step ran 1.4× slower (benchmark.py, 2 cores).
    "--xla_cpu_enable_concurrency_optimized_scheduler": "false",
    # Convolutions by XLA's own (Eigen) kernels rather than YNNPACK, which jaxlib 0.10 uses
    # by default: on a 2-core Xeon (AVX-512), SSD300's 3×3 convolutions and SSDLite's first
    # one ran 1.3–1.5× faster. Matrix products stay with YNNPACK, whose bfloat16 kernels (AMX)
    # make bf16 1×1 convolutions ~5× faster than in float32. An experimental flag: XLA refuses
    # unknown flags, so it is set only for the jaxlib it was measured with.
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}
try:
    _JAXLIB = metadata.version("jaxlib")
except metadata.PackageNotFoundError:
    _JAXLIB = ""
if not _JAXLIB.startswith("0.10."):
    del _XLA_CPU_FLAGS["--xla_cpu_experimental_ynn_fusion_type"]
_flags = os.environ.get("XLA_FLAGS", "")
_added = [name for name in _XLA_CPU_FLAGS if name not in _flags]
for _name in _added:
    _flags = f"{_flags} {_name}={_XLA_CPU_FLAGS[_name]}".strip()
os.environ["XLA_FLAGS"] = _flags

# XLA reads XLA_FLAGS once, when JAX's first computation starts its backend: after that the
# flags above change nothing, and on CPU training can run several times slower (one
# 150×150×128 convolution's forward + backward at batch 8: 2.4–3.1 s without them, 0.84–1.34 s
# with them; docs/benchmarks/conv_alternation_2026-12-07_avx512.json).
_bridge = sys.modules.get("jax._src.xla_bridge")
if _added and _bridge is not None and getattr(_bridge, "backends_are_initialized", bool)():
    if sys.modules["jax"].default_backend() == "cpu":
        warnings.warn(
            "JAX started its CPU backend before ssd_jax was imported, so ssd_jax's XLA flags "
            f"({', '.join(_added)}) do not apply in this process and CPU training can be "
            "several times slower: import ssd_jax before computing with JAX, or set XLA_FLAGS.",
            RuntimeWarning,
            stacklevel=2,
        )

__all__ = ["Detector"]


def __getattr__(name: str):
    # ``Detector`` is imported on first use: importing JAX takes about a second, and the
    # command-line tools import ssd_jax for ``--help`` and for their one-line errors too.
    if name == "Detector":
        from ssd_jax.detector import Detector

        return Detector
    raise AttributeError(f"module 'ssd_jax' has no attribute {name!r}")
