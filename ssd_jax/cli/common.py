"""Conventions shared by every command-line tool.

    parser = make_parser("ssd-jax-eval", __doc__)
    add_config_flags(parser)                         # --config, --config.key=value, --verbose
    args, overrides = parse(parser, argv)
    return run_cli(lambda: evaluate(args, overrides), args.verbose)

User mistakes (``ssd_jax.errors.UserError``, which every reader's error type is, and the file
system's errors) print one line,
``<prog>: error: <message>``, and exit with status 2; ``--verbose`` prints the whole message (e.g.
every mismatching checkpoint key) and the traceback. Other exceptions are bugs and keep their
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ssd_jax.errors import UserError


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug: ``UserError`` (the readers' errors —
    ``CocoFormatError``, ``VocFormatError``, ``ImageReadError``, ``CheckpointFormatError``,
    ``UnsafeCheckpointError`` — and the config, checkpoint and output errors all derive from it)
    and the file system's refusals."""
    return (
        UserError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    )


def load_config(name: str, overrides: Sequence[str] = ()) -> Any:
    """The config ``name`` (a file or a bundled config's name) with ``key=value`` overrides,
    checked: unknown keys, values of the wrong type and values out of range are ``ConfigError``s
    (one line), before any work."""
    from ssd_jax.config import load_config as load
    from ssd_jax.config import validate_config

    config = load(name, list(overrides))
    validate_config(config)
    return config


class DeferredModule:
    """A module imported on its first attribute access: ``jax = DeferredModule("jax")`` at a
    tool's top level keeps ``--help`` and argument errors from importing JAX (about a second)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``prog: error: message (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(prog: str, doc: str | None) -> OneLineParser:
    """A parser whose description is the module docstring; ``--verbose`` added."""
    parser = OneLineParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="on an error, print all its details (e.g. every mismatching "
        "checkpoint key) and the traceback",
    )
    return parser


def add_config_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config`` (a configs/*.py file or a bundled config's name)."""
    parser.add_argument(
        "--config",
        required=required,
        metavar="FILE_OR_NAME",
        help="config file (configs/*.py) or bundled config name, e.g. "
        "ssd300_coco; override any value with --config.KEY=VALUE, e.g. "
        "--config.train.batch_size=32",
    )


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """Parsed flags and the ``--config.key=value`` overrides (anything else unknown is an
    error). ``--config.key value`` (with a space) is accepted too."""
    args, unknown = parser.parse_known_args(argv)
    overrides, bad, i = [], [], 0
    while i < len(unknown):
        item = unknown[i]
        if item.startswith("--config.") and "=" in item:
            overrides.append(item[len("--config.") :])
        elif item.startswith("--config.") and i + 1 < len(unknown):
            overrides.append(f"{item[len('--config.') :]}={unknown[i + 1]}")
            i += 1
        else:
            bad.append(item)
        i += 1
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)}")
    return args, overrides


def run_cli(fn: Callable[[], int | None], verbose: bool, prog: str | None = None) -> int:
    """``fn()``'s exit status (None → 0); user errors → one line on stderr and status 2."""
    prog = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "ssd-jax")
    try:
        return int(fn() or 0)
    except user_errors() as e:
        if verbose:
            traceback.print_exc()
            print(f"{prog}: error: {e}", file=sys.stderr)
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            more = " (--verbose for details)" if "\n" in str(e).strip() else ""
            print(f"{prog}: error: {first}{more}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def setup_logging(verbose: bool = False) -> None:
    """ssd_jax's messages at INFO (DEBUG with ``verbose``) on stderr; libraries at WARNING."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ssd_jax")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not root.handlers:
        root.addHandler(handler)
    root.propagate = False


def add_backend_flag(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--backend jax|onnxruntime|openvino|litert``: what runs the model (``verb``: "run")."""
    parser.add_argument(
        "--backend",
        default="jax",
        choices=("jax", "onnxruntime", "openvino", "litert"),
        help="jax: the config's network with --checkpoint's weights; "
        "onnxruntime / openvino: --checkpoint is an exported .onnx, litert: an exported "
        f".tflite (ssd-jax-export), {verb} as deployed",
    )


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Multi-host flags (SLURM, TPU pods and Open MPI are detected without them)."""
    parser.add_argument(
        "--coordinator",
        default="",
        metavar="HOST:PORT",
        help="jax.distributed coordinator address (every process runs the same command)",
    )
    parser.add_argument(
        "--num-processes", type=int, default=0, help="number of processes (with --coordinator)"
    )
    parser.add_argument(
        "--process-id", type=int, default=-1, help="this process's index (with --coordinator)"
    )
