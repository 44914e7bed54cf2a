"""mmdetection 3.3.0's PhotoMetricDistortion on fixed choices, for tests/test_data_transforms.py.
Run with the reference environment (../shared/mmdet_reference):

    $(bash ../shared/mmdet_reference/setup.sh)/bin/python scripts/make_photometric_reference.py \
        tests/data/photometric_reference.npz

mmdetection's pipeline holds BGR images: each case feeds the BGR version of an RGB test image and
stores the output flipped back to RGB. The channel permutation is left off (it permutes BGR there
and RGB here: the same distribution, not the same values).
"""

import sys

import numpy as np
from mmdet.datasets.transforms import PhotoMetricDistortion

# (mode, brightness, contrast, saturation, hue, delta, alpha, saturation factor, hue degrees)
CASES = [
    (0, 1, 1, 1, 1, 20.0, 1.4, 1.3, 15.0),  # contrast after HSV; saturation > 1 (clipped)
    (1, 1, 1, 1, 1, -25.0, 0.6, 0.7, -17.0),  # contrast before HSV; hue wraps below 0
    (1, 1, 1, 1, 0, 31.0, 1.5, 1.5, 0.0),  # values well above 255: not clipped
    (0, 0, 0, 1, 0, 0.0, 1.0, 1.45, 0.0),  # saturation only, > 1
    (0, 0, 0, 0, 1, 0.0, 1.0, 1.0, 17.9),  # hue only, wraps above 360
    (0, 1, 0, 0, 0, -32.0, 1.0, 1.0, 0.0),  # brightness only: below 0, not clipped
]


def main() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # RGB
    image[0, :8] = (255, 0, 0)  # saturated colours: the saturation clip matters there
    image[1, :8] = (250, 250, 5)
    out = {"image_rgb": image, "cases": np.asarray(CASES, np.float64)}
    for k, (mode, b, c, s, h, delta, alpha, sat, hue) in enumerate(CASES):
        t = PhotoMetricDistortion()
        t._random_flags = lambda: (
            int(mode),
            int(b),
            int(c),
            int(s),
            int(h),
            0,
            delta,
            alpha,
            sat,
            hue,
            np.arange(3),
        )
        res = t.transform({"img": image[..., ::-1].copy()})["img"]
        assert res.dtype == np.float32
        out[f"out_{k}"] = res[..., ::-1]  # back to RGB
    np.savez_compressed(sys.argv[1], **out)
    print({k: (float(v.min()), float(v.max())) for k, v in out.items() if k.startswith("out_")})


if __name__ == "__main__":
    main()
