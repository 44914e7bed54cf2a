"""One CLI convention: every tool's user mistakes are one line on stderr, exit status 2, no
traceback; ``--verbose`` gives the details; ``--help`` documents every flag."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "ssdlite_shapes.py")
SCRIPTS = {  # script → arguments that are complete apart from what the test adds
    "train.py": ["--config", CONFIG, "--workdir", "{tmp}/w"],
    "eval.py": [
        "--config",
        CONFIG,
        "--checkpoint",
        "{ckpt}",
        "--ann-file",
        "{tmp}/a.json",
        "--img-dir",
        "{tmp}",
    ],
    "predict.py": ["--config", CONFIG, "--checkpoint", "{ckpt}", "{tmp}", "--out", "{tmp}/o"],
    "benchmark.py": ["--config", CONFIG, "--skip-train", "--skip-input", "--iters", "1"],
    "ssd_jax/porting/__main__.py": ["{ckpt}", "{tmp}/o", "--config", CONFIG],
    "ssd_jax/export/__main__.py": [
        "--config",
        CONFIG,
        "--checkpoint",
        "{ckpt}",
        "--format",
        "jax",
        "--out",
        "{tmp}/o",
    ],
}


def run(
    script: str, args: list[str], tmp: pathlib.Path, ckpt: str = "{tmp}/none.pth"
) -> subprocess.CompletedProcess:
    args = [a.replace("{ckpt}", ckpt).replace("{tmp}", str(tmp)) for a in args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env=env,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_mistyped_config_key_is_one_line_naming_the_nearest_key(script, tmp_path):
    proc = run(script, SCRIPTS[script] + ["--config.train.bach_size=3"], tmp_path)
    assert_one_line_error(proc, "train.bach_size", "train.batch_size")
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_missing_file_is_one_line_naming_it(script, tmp_path):
    args = SCRIPTS[script]
    if "{ckpt}" in " ".join(args):  # the checkpoint is missing
        proc = run(script, args, tmp_path, ckpt=str(tmp_path / "missing.pth"))
        assert_one_line_error(proc, "missing.pth")
    else:  # the config file is
        args = [str(tmp_path / "missing_config.py") if a == CONFIG else a for a in args]
        proc = run(script, args, tmp_path)
        assert_one_line_error(proc, "missing_config.py")


def test_an_unknown_flag_is_one_line(tmp_path):
    proc = run("eval.py", SCRIPTS["eval.py"] + ["--batch_size=2"], tmp_path)
    assert_one_line_error(proc, "--batch_size")


def test_verbose_gives_the_traceback(tmp_path):
    proc = run(
        "train.py", SCRIPTS["train.py"] + ["--config.train.bach_size=3", "--verbose"], tmp_path
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_documents_every_flag(script, tmp_path):
    proc = run(script, ["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    import re

    flags = re.findall(r"^\s+(--[a-z][a-z0-9-]*)", proc.stdout, re.M)
    assert "--verbose" in flags and len(flags) >= 2
    assert not [f for f in flags if "_" in f], "flags are kebab-case"
    # every flag line is followed by help text (argparse prints it on the same or next line)
    entries = [
        e for e in re.split(r"\n(?=\s{2}-)", proc.stdout.split("options:", 1)[1]) if e.strip()
    ]
    undocumented = [e.split()[0] for e in entries if len(e.split()) < 2]
    assert not undocumented, undocumented


# Imported only once a tool has work to do (each takes from 0.1 s to a second).
HEAVY = {"jax", "jaxlib", "flax", "optax", "orbax", "grain", "tensorflow_datasets", "tensorflow"}
HEAVY |= {"matplotlib", "cv2", "pycocotools", "onnx", "onnxruntime", "openvino", "torch"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_does_not_import_jax(script, tmp_path):
    """``--help`` answers at once (before: 1.5 s, importing JAX through ``import ssd_jax``)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-300:]
