"""Train an SSD: ``ssd-jax-train --config configs/ssd300_coco.py --workdir runs/ssd300``.

Overrides: ``--config.train.batch_size=32``; ``--resume`` continues from the workdir's latest
checkpoint. Multi-host: launched under SLURM / on a TPU pod, or with ``--coordinator HOST:PORT
--num-processes N --process-id I``, every process runs this same command.
"""

from __future__ import annotations

from collections.abc import Sequence

from ssd_jax.cli import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.make_parser("ssd-jax-train", __doc__)
    common.add_config_flags(parser)
    parser.add_argument(
        "--workdir",
        required=True,
        help="directory for checkpoints, metrics.jsonl, TensorBoard logs and pictures",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --workdir"
    )
    common.add_distributed_flags(parser)
    args, overrides = common.parse(parser, argv)

    def run() -> None:
        from ssd_jax.config import load_config, validate_config

        config = load_config(args.config, overrides)
        validate_config(config)
        common.setup_logging(args.verbose)
        from ssd_jax.parallel import maybe_initialize_distributed

        maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        from ssd_jax.training.loop import train_and_evaluate

        train_and_evaluate(config, args.workdir, resume=args.resume)

    return common.run_cli(run, args.verbose, "ssd-jax-train")
