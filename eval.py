"""Evaluate a detector (``ssd-jax-eval``): ``python eval.py --config configs/ssd300_coco.py
--checkpoint CKPT``. See ``python eval.py --help``."""

import sys

from ssd_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
