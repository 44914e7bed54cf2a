"""Run a detector on image files (``ssd-jax-predict``): ``python predict.py --config CFG
--checkpoint CKPT photos/ --out runs/predict``. See ``python predict.py --help``."""

import sys

from ssd_jax.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
