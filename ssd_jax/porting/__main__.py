"""``python -m ssd_jax.porting IN.pth OUT_DIR --config CFG`` (= ``ssd-jax-import``)."""

import sys

from ssd_jax.cli.port import main

if __name__ == "__main__":
    sys.exit(main())
