"""``python -m ssd_jax.export`` (= ``ssd-jax-export``)."""

import sys

from ssd_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
