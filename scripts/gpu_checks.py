"""GPU-only checks for the README (run by scripts/gpu_benchmark.sh's second part on a CUDA
machine): mmdetection parity of the JAX path on the GPU under XLA's default float32 precision
(TF32 on Ampere and later) and under "highest", and the float32 forward's speed either way.

    python scripts/gpu_checks.py FIXTURE_DIR   (holds checkpoint.pth.xz and reference.npz)
"""

import sys
import time

import jax
import numpy as np
from check_exported import matched  # scripts/ is on sys.path when run as a script

from ssd_jax import Detector
from ssd_jax.config import load_config


def main(fixture: str) -> None:
    ref = np.load(f"{fixture}/reference.npz")
    print("device", jax.devices()[0].device_kind)
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(precision):
            det = Detector.from_checkpoint(
                "ssdlite_mobilenetv2_320_coco", f"{fixture}/checkpoint.pth.xz"
            )
            got = matched(ref, det.predict([ref["image_0"], ref["image_1"]]))
            print(f"jax fp32 matmul precision {precision}: matched {got} of 200, 200")
    x = np.random.default_rng(0).normal(size=(64, 300, 300, 3)).astype(np.float32)
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(precision):
            det = Detector(load_config("ssd300_coco"))
            for placed in (False, True):
                if placed:
                    det.variables = jax.device_put(det.variables)
                xd = jax.device_put(x)
                jax.block_until_ready(det.forward(xd))
                t = time.perf_counter()
                for _ in range(5):
                    jax.block_until_ready(det.forward(xd))
                dt = (time.perf_counter() - t) / 5
                print(
                    f"ssd300 fp32 b64 forward, precision {precision}, variables "
                    f"{'on device' if placed else 'as built'}: {64 / dt:.0f} img/s"
                )


if __name__ == "__main__":
    main(sys.argv[1])
