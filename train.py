"""Train an SSD: ``python train.py --config configs/ssd300_coco.py --workdir runs/ssd300``.

Overrides: ``--config.train.batch_size=32``; ``--resume`` continues from the workdir's latest
checkpoint. Multi-host: launched under SLURM / on a TPU pod, or with ``--coordinator HOST:PORT
--num_processes N --process_id I``, every process runs this same command.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from ssd_jax.training.init import maybe_initialize_distributed, setup_logging

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=False)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and pictures")
flags.DEFINE_bool("resume", False, "continue from the latest checkpoint in --workdir")
flags.DEFINE_string("coordinator", "", "jax.distributed coordinator address HOST:PORT")
flags.DEFINE_integer("num_processes", 0, "number of processes (with --coordinator)")
flags.DEFINE_integer("process_id", -1, "this process's index (with --coordinator)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    setup_logging()
    maybe_initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    from ssd_jax.training.loop import train_and_evaluate
    train_and_evaluate(FLAGS.config, FLAGS.workdir, resume=FLAGS.resume)


if __name__ == "__main__":
    app.run(main)
