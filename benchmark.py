"""Speed and memory of a config (``ssd-jax-benchmark``): ``python benchmark.py --config CFG
--batch-size 8``. See ``python benchmark.py --help``."""

import sys

from ssd_jax.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
