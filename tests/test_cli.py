"""One CLI convention: every tool's user mistakes are one line on stderr, exit status 2, no
traceback; ``--verbose`` gives the details; ``--help`` documents every flag."""

from __future__ import annotations

import importlib
import logging
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import subprocess_env

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
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env=subprocess_env(),
    )


#: The module whose ``main(argv)`` each script calls.
MAINS = {
    "train.py": "ssd_jax.cli.train",
    "eval.py": "ssd_jax.cli.evaluate",
    "predict.py": "ssd_jax.cli.predict",
    "benchmark.py": "ssd_jax.cli.benchmark",
    "ssd_jax/porting/__main__.py": "ssd_jax.cli.port",
    "ssd_jax/export/__main__.py": "ssd_jax.cli.export",
}


@pytest.fixture
def call_main(tmp_path, capfd, monkeypatch):
    """``call_main(script, args, ckpt=...)``: the script's ``main(args)`` in this process, in
    ``tmp_path``, with what it printed, as ``run`` returns it. For the errors a tool raises
    once it has its arguments; test_a_mistyped_config_key... and the ``--help`` tests run
    every script as a process, from its entry point."""
    logger = logging.getLogger("ssd_jax")
    handlers = list(logger.handlers)
    monkeypatch.chdir(tmp_path)

    def call(script: str, args: list[str], ckpt: str = "{tmp}/none.pth"):
        args = [a.replace("{ckpt}", ckpt).replace("{tmp}", str(tmp_path)) for a in args]
        main = importlib.import_module(MAINS[script]).main
        capfd.readouterr()
        try:
            code = main(args)
        except SystemExit as e:  # argparse
            code = e.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([script, *args], code, out, err)

    yield call
    logger.handlers[:] = handlers  # a handler added here holds this test's captured stderr


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
def test_a_missing_file_is_one_line_naming_it(script, tmp_path, call_main):
    args = SCRIPTS[script]
    if "{ckpt}" in " ".join(args):  # the checkpoint is missing
        proc = call_main(script, args, ckpt=str(tmp_path / "missing.pth"))
        assert_one_line_error(proc, "missing.pth")
    else:  # the config file is
        args = [str(tmp_path / "missing_config.py") if a == CONFIG else a for a in args]
        proc = call_main(script, args)
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
HEAVY |= {"ai_edge_litert"}


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


def write_bad_inputs(tmp: pathlib.Path) -> None:
    """Good and bad inputs in ``tmp``: COCO files (4 shapes categories, as the config's), image
    folders, checkpoints and a VOC tree whose one annotation is cut."""
    import json

    import numpy as np
    from PIL import Image

    good = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81}
        ],
        "categories": [
            {"id": i + 1, "name": n}
            for i, n in enumerate(("ellipse", "rectangle", "triangle", "star"))
        ],
    }
    (tmp / "good.json").write_text(json.dumps(good))
    (tmp / "bad.json").write_text(json.dumps(good)[:40])  # cut
    (tmp / "wrong.json").write_text(json.dumps({**good, "images": {"a.jpg": 1}}))
    (tmp / "list.json").write_text("[1, 2]")
    for name in ("imgs", "empty", "corrupt", "notckpt"):
        (tmp / name).mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp / "imgs" / "a.jpg")
    (tmp / "corrupt" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    (tmp / "notckpt" / "notes.txt").write_text("not a checkpoint")
    (tmp / "bad.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    voc = tmp / "voc" / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    for split in ("test", "trainval"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("000001\n")
    (voc / "Annotations" / "000001.xml").write_text("<annotation><size><width>32</width>")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(voc / "JPEGImages" / "000001.jpg")


_TRAIN = ["train.py", "--config", CONFIG, "--workdir", "w", "--config.data.workers=0"]
_TRAIN += ["--config.data.val_ann_file=", "--config.train.batch_size=1"]
_EVAL = ["eval.py", "--config", CONFIG, "--out", "o", "--checkpoint"]
_PREDICT = ["predict.py", "--config", CONFIG, "--out", "o", "--checkpoint"]
_EXPORT = ["ssd_jax/export/__main__.py", "--config", CONFIG, "--format", "jax", "--out", "o.jax"]
_IMPORT = ["ssd_jax/porting/__main__.py", "--config", CONFIG]
_BENCH = ["benchmark.py", "--config", CONFIG, "--backends", "jax", "--batch-sizes", "1"]
_BENCH += ["--modes", "raw", "--rounds", "1"]
_COCO = "--config.data.ann_file={} --config.data.img_dir={}".split()
_NOT_TORCH = "bad.pth is truncated, corrupt or not a torch checkpoint"
_NOT_ORBAX = "no complete checkpoint step in"
BAD_INPUTS = [  # (tool, kind of bad input, arguments, what the one line says)
    (
        "train",
        "bad JSON",
        _TRAIN + ["--config.data.ann_file=bad.json", "--config.data.img_dir=imgs"],
        "bad.json: unreadable or truncated JSON",
    ),
    (
        "train",
        "wrong structure",
        _TRAIN + ["--config.data.ann_file=wrong.json", "--config.data.img_dir=imgs"],
        "wrong.json: missing or non-list 'images'",
    ),
    (
        "train",
        "missing image folder",
        _TRAIN + ["--config.data.ann_file=good.json", "--config.data.img_dir=nodir"],
        "train data not found: nodir",
    ),
    (
        "train",
        "empty image folder",
        _TRAIN + ["--config.data.ann_file=good.json", "--config.data.img_dir=empty"],
        "train image folder empty is empty",
    ),
    # read in a data worker process; raised in the loader's thread: skip warnings, then one error
    (
        "train",
        "corrupt image",
        _TRAIN
        + [
            "--config.data.ann_file=good.json",
            "--config.data.img_dir=corrupt",
            "--config.data.workers=1",
        ],
        "no readable image in a whole epoch",
    ),
    (
        "train",
        "config value",
        _TRAIN + ["--config.optimizer.lr=-1"],
        "optimizer.lr=-1.0 must be > 0",
    ),
    (
        "train",
        "VOC XML",
        _TRAIN + ["--config.data.source=voc", "--config.data.voc_root=voc"],
        "malformed VOC annotation",
    ),
    (
        "train",
        "corrupt checkpoint",
        _TRAIN
        + [
            "--config.data.ann_file=good.json",
            "--config.data.img_dir=imgs",
            "--config.train.load_from=bad.pth",
        ],
        _NOT_TORCH,
    ),
    (
        "eval",
        "bad JSON",
        _EVAL + ["bad.pth", "--ann-file", "bad.json", "--img-dir", "imgs"],
        "bad.json: unreadable or truncated JSON",
    ),
    (
        "eval",
        "wrong structure",
        _EVAL + ["bad.pth", "--ann-file", "list.json", "--img-dir", "imgs"],
        "list.json: expected a JSON object",
    ),
    (
        "eval",
        "missing image folder",
        _EVAL + ["bad.pth", "--ann-file", "good.json", "--img-dir", "nodir"],
        "val data not found: nodir",
    ),
    (
        "eval",
        "empty image folder",
        _EVAL + ["bad.pth", "--ann-file", "good.json", "--img-dir", "empty"],
        "val image folder empty is empty",
    ),
    (
        "eval",
        "corrupt checkpoint",
        _EVAL + ["bad.pth", "--ann-file", "good.json", "--img-dir", "imgs"],
        _NOT_TORCH,
    ),
    (
        "eval",
        "not a checkpoint",
        _EVAL + ["notckpt", "--ann-file", "good.json", "--img-dir", "imgs"],
        _NOT_ORBAX,
    ),
    (
        "eval",
        "config value",
        _EVAL + ["bad.pth", "--config.test.score_thr=2"],
        "test.score_thr=2.0 must be in [0, 1]",
    ),
    (
        "eval",
        "VOC XML",
        _EVAL + ["bad.pth", "--data", "voc", "--voc-root", "voc"],
        "malformed VOC annotation",
    ),
    (
        "predict",
        "bad JSON",
        _PREDICT + ["bad.pth", "imgs", "--ann-file", "bad.json"],
        "bad.json: unreadable or truncated JSON",
    ),
    (
        "predict",
        "wrong structure",
        _PREDICT + ["bad.pth", "imgs", "--ann-file", "wrong.json"],
        "wrong.json: 'images' is not a list",
    ),
    (
        "predict",
        "missing image folder",
        _PREDICT + ["bad.pth", "nodir"],
        "input path(s) not found: nodir",
    ),
    ("predict", "empty image folder", _PREDICT + ["bad.pth", "empty"], "no images found in empty"),
    ("predict", "corrupt checkpoint", _PREDICT + ["bad.pth", "imgs"], _NOT_TORCH),
    ("predict", "not a checkpoint", _PREDICT + ["notckpt", "imgs"], _NOT_ORBAX),
    (
        "predict",
        "config value",
        _PREDICT + ["bad.pth", "imgs", "--config.test.nms_iou=0"],
        "test.nms_iou=0.0 must be in (0, 1]",
    ),
    ("export", "corrupt checkpoint", _EXPORT + ["--checkpoint", "bad.pth"], _NOT_TORCH),
    ("export", "not a checkpoint", _EXPORT + ["--checkpoint", "notckpt"], _NOT_ORBAX),
    (
        "export",
        "config value",
        _EXPORT + ["--checkpoint", "bad.pth", "--config.input_size=0"],
        "input_size=0 must be a positive integer",
    ),
    ("import", "corrupt checkpoint", _IMPORT + ["bad.pth", "o"], _NOT_TORCH),
    (
        "import",
        "not a checkpoint",
        _IMPORT + ["good.json", "o"],
        "good.json is truncated, corrupt or not a torch checkpoint",
    ),
    (
        "import",
        "config value",
        _IMPORT + ["bad.pth", "o", "--config.train.batch_size=0"],
        "train.batch_size=0 must be a positive integer",
    ),
    ("benchmark", "corrupt checkpoint", _BENCH + ["--checkpoint", "bad.pth"], _NOT_TORCH),
    ("benchmark", "not a checkpoint", _BENCH + ["--checkpoint", "notckpt"], _NOT_ORBAX),
    (
        "benchmark",
        "config value",
        _BENCH + ["--config.test.max_per_img=0"],
        "test.max_per_img=0 must be an integer >= 1",
    ),
]


@pytest.mark.parametrize(
    "tool,kind,args,says", BAD_INPUTS, ids=[f"{t}-{k.replace(' ', '_')}" for t, k, *_ in BAD_INPUTS]
)
def test_every_bad_input_is_one_line_in_every_tool(tool, kind, args, says, tmp_path, call_main):
    """Each tool with each kind of bad input it reads: one line on stderr naming the problem,
    exit status 2, no traceback (the readers' errors are all ``UserError``s). In this process,
    but for the corrupt image, which a data worker process reads."""
    write_bad_inputs(tmp_path)
    if kind == "corrupt image":
        proc = run(args[0], args[1:], tmp_path)
    else:
        proc = call_main(args[0], args[1:])
    if kind == "corrupt image":  # each skipped image is a warning first, as in any training
        warnings = proc.stderr.strip().splitlines()[:-1]
        assert warnings and all("skipped image" in w for w in warnings), proc.stderr[-2000:]
        proc.stderr = proc.stderr.strip().splitlines()[-1]
    assert_one_line_error(proc, says)
    if kind == "corrupt image":
        return  # the run had started (its TensorBoard file is there)
    for out in (tmp_path / "w", tmp_path / "o"):  # nothing written (empty folders at most)
        assert not [f for _, _, files in os.walk(out) for f in files], out
