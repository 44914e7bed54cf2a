"""One process of a multi-process training test: jax.distributed on localhost (CPU), a few
train steps via ``train_and_evaluate``, the initial and final parameters saved to
``OUT/init_<id>.npz`` and ``OUT/params_<id>.npz``.

    python tests/distributed_train_driver.py PORT NUM_PROCESSES PROCESS_ID DATA_DIR WORKDIR OUT \
        [ANN_FILE]

Data in the annotation file's order (no shuffling, no flips), so that a one-process run given
the images in the order the processes' shards interleave into global batches sees the same
batches. ANN_FILE defaults to DATA_DIR/annotations/instances_train.json.
"""

import os
import sys

import jax
import numpy as np
from flax import traverse_util

from builders import SMALL_SSDLITE  # tests/ is this script's folder


def main() -> None:
    port, n, pid, data, workdir, out = sys.argv[1:7]
    ann = sys.argv[7] if len(sys.argv) > 7 else f"{data}/annotations/instances_train.json"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from ssd_jax.cli.common import setup_logging
    from ssd_jax.parallel import maybe_initialize_distributed

    setup_logging()
    maybe_initialize_distributed(f"localhost:{port}", int(n), int(pid))
    assert jax.process_count() == int(n)
    from ssd_jax.config import load_config
    from ssd_jax.training.loop import train_and_evaluate

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(
        os.path.join(root, "configs", "ssdlite_shapes.py"),
        [
            f"data.ann_file={ann}",
            f"data.img_dir={data}/train",
            "data.val_ann_file=",
            "data.workers=0",
            *SMALL_SSDLITE,  # the 32 px model: this tests the processes, not the network
            "train.batch_size=4",
            "train.num_steps=3",
            "train.log_every=1",
            "train.ckpt_every=100",
            "data.shuffle=False",
            "augment.flip_prob=0.0",
        ],
    )
    from ssd_jax.models.assembly import init_variables, model_for

    init = init_variables(model_for(config), config.input_size, config.train.seed)
    result = train_and_evaluate(config, workdir)
    for name, variables in (("init", init), ("params", result["variables"])):
        flat = traverse_util.flatten_dict(variables, sep="/")
        arrays = {k: np.asarray(v) for k, v in flat.items()}
        np.savez(os.path.join(out, f"{name}_{pid}.npz"), **arrays)


if __name__ == "__main__":
    main()
