"""Convert an mmdetection ``.pth`` into an orbax checkpoint for a config.

    ssd-jax-import ssd300_coco_20210803_015428-d231a06e.pth ckpt/ssd300 --config ssd300_coco

The ``.pth`` may be zip or legacy format (``.xz`` compressed too), in the current or the
pre-v2.14 SSD key layout; it is read without torch and without running code from the file. A
checkpoint that does not fit the config is refused, naming the config it fits.
"""

from __future__ import annotations

from collections.abc import Sequence

from ssd_jax.cli import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.make_parser("ssd-jax-import", __doc__)
    parser.add_argument("checkpoint", help="mmdetection .pth (zip or legacy format, .xz accepted)")
    parser.add_argument("out_dir", help="orbax checkpoint folder to write (new or empty)")
    common.add_config_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace what --out_dir holds")
    args, overrides = common.parse(parser, argv)

    def run() -> None:
        import shutil

        from ssd_jax.outputs import check_output_path

        config = common.load_config(args.config, overrides)
        check_output_path(args.out_dir, overwrite=args.overwrite)
        from ssd_jax import checkpoints  # JAX, orbax: after the checks above
        from ssd_jax.models.assembly import zero_variables
        from ssd_jax.porting import load_checkpoint_variables

        variables = load_checkpoint_variables(
            args.checkpoint, zero_variables(config), config=config
        )
        if args.overwrite:
            shutil.rmtree(args.out_dir, ignore_errors=True)
        out = checkpoints.save_variables(
            args.out_dir,
            variables,
            {
                "config": config.name,
                "class_names": list(config.class_names),
                "category_ids": list(config.get("category_ids", ())),
                "source": args.checkpoint,
            },
        )
        print(f"wrote {out} ({config.name}, {len(config.class_names)} classes)")

    return common.run_cli(run, args.verbose, "ssd-jax-import")
