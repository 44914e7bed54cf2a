"""Train an SSD (``ssd-jax-train``): ``python train.py --config configs/ssd300_coco.py --workdir
runs/ssd300``. See ``python train.py --help``."""

import sys

from ssd_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
