"""Train an SSD: ``ssd-jax-train --config configs/ssd300_coco.py --workdir runs/ssd300``.

Overrides: ``--config.train.batch_size=32``. The workdir must be new or empty: ``--resume``
continues the run it holds from its latest checkpoint, ``--overwrite`` moves that run aside (to
``WORKDIR.old-<date>-<time>``) and starts again; without either, a workdir holding an earlier run
is refused and left as it is. Multi-host: launched under SLURM / on a TPU pod, or with
``--coordinator HOST:PORT --num-processes N --process-id I``, every process runs this same
command.
"""

from __future__ import annotations

from collections.abc import Sequence

from ssd_jax import host_memory
from ssd_jax.cli import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.make_parser("ssd-jax-train", __doc__)
    common.add_config_flags(parser)
    parser.add_argument(
        "--workdir",
        required=True,
        help="directory for checkpoints, metrics.jsonl, TensorBoard logs and pictures "
        "(new or empty, unless --resume or --overwrite)",
    )
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --workdir"
    )
    earlier.add_argument(
        "--overwrite",
        action="store_true",
        help="move the earlier run in --workdir aside (to WORKDIR.old-<date>-<time>) and start "
        "again",
    )
    common.add_distributed_flags(parser)
    args, overrides = common.parse(parser, argv)
    if argv is None:  # run as a program (not main() called with arguments, as tests do)
        host_memory.restart_with_huge_pages()

    def run() -> None:
        from ssd_jax.outputs import check_workdir

        config = common.load_config(args.config, overrides)
        check_workdir(args.workdir, resume=args.resume, overwrite=args.overwrite)  # before JAX
        common.setup_logging(args.verbose)
        from ssd_jax.parallel import maybe_initialize_distributed

        maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        from ssd_jax.training.loop import train_and_evaluate

        train_and_evaluate(config, args.workdir, resume=args.resume, overwrite=args.overwrite)

    return common.run_cli(run, args.verbose, "ssd-jax-train")
