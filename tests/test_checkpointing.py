"""Checkpoints under faults: truncated starting weights, steps cut mid-write, a full disk during a
save, a restore after a config change. docs/RELIABILITY.md lists each case."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import sysconfig
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import require
from ssd_jax.config import load_config
from ssd_jax.training.checkpointing import CheckpointRestoreError, TrainCheckpointer
from ssd_jax.training.state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssd300_coco.py"


# ---- 2. Bad checkpoints ----


@pytest.mark.parametrize("option", ["load_from", "pretrained_backbone"])
def test_truncated_pth_as_starting_weights_is_refused_naming_the_file(tmp_path, option):
    torch = require("torch")
    from ssd_jax.porting import CheckpointFormatError
    from ssd_jax.training.init import initial_variables

    path = tmp_path / "start.pth"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(8, 3, 3, 3)}}, path)
    path.write_bytes(path.read_bytes()[:-200])
    config = load_config(CONFIG, [f"train.{option}={str(path)!r}"])
    with pytest.raises(CheckpointFormatError, match="start.pth"):
        initial_variables(
            config, lambda: {"params": {"x": np.zeros(1, np.float32)}, "batch_stats": {}}
        )


def tiny_state(step: int):
    """A TrainState of two small arrays (no model to compile) whose values encode ``step``."""
    params = {"w": np.full((2, 3), step, np.float32), "b": np.full(3, step, np.float32)}
    state = create_train_state(
        {"params": params, "batch_stats": {}}, optax.sgd(0.1, momentum=0.9), 0
    )
    return state.replace(step=jnp.int32(step))


def save_steps(workdir: pathlib.Path, steps) -> TrainCheckpointer:
    ckpt = TrainCheckpointer(str(workdir), keep=5)
    for s in steps:
        ckpt.save(s, tiny_state(s), {"data_state": {"position": s}})
    return ckpt


# Files whose damage orbax notices (cutting the per-process ocdbt.process_0/ copies is not
# noticed: the merged files at the item root are what is read).
CUT_FILES = ["variables/d/*", "variables/_METADATA", "train_state/manifest.ocdbt", "meta/metadata"]


def cut(step_dir: pathlib.Path, pattern: str) -> pathlib.Path:
    (path,) = [p for p in step_dir.glob(pattern) if p.is_file()][:1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# A restore that fails inside orbax can leave a callback for its closed asyncio loop behind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("pattern", CUT_FILES)
def test_restore_falls_back_from_a_cut_step_and_the_next_save_replaces_it(
    tmp_path, pattern, caplog
):
    save_steps(tmp_path, [1, 2]).close()
    cut(tmp_path / "checkpoints" / "2", pattern)
    ckpt = TrainCheckpointer(str(tmp_path), keep=5)
    assert ckpt.latest_step() == 2  # the directory looks complete
    with caplog.at_level(logging.WARNING, logger="ssd_jax.training.checkpointing"):
        state, meta = ckpt.restore(tiny_state(0))
    assert int(state.step) == 1 and meta == {"data_state": {"position": 1}}
    np.testing.assert_array_equal(state.params["w"], np.full((2, 3), 1, np.float32))
    assert any(
        "step 2" in r.getMessage() and "trying the previous step" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(CheckpointRestoreError, match=r"cannot restore step 2 from .*checkpoints"):
        ckpt.restore(tiny_state(0), step=2)
    ckpt.save(2, tiny_state(2), {"data_state": {"position": 2}})  # training reaches step 2 again
    state, meta = ckpt.restore(tiny_state(0))
    assert int(state.step) == 2 and meta == {"data_state": {"position": 2}}
    ckpt.close()


def test_restore_with_every_step_cut_fails_listing_each(tmp_path):
    save_steps(tmp_path, [1, 2]).close()
    for s in (1, 2):
        cut(tmp_path / "checkpoints" / str(s), "meta/metadata")
    ckpt = TrainCheckpointer(str(tmp_path), keep=5)
    with pytest.raises(CheckpointRestoreError) as info:
        ckpt.restore(tiny_state(0))
    message = str(info.value)
    assert str(tmp_path / "checkpoints") in message
    assert "step 2: " in message and "step 1: " in message
    with pytest.raises(FileNotFoundError, match="no complete checkpoint step 7"):
        ckpt.restore(tiny_state(0), step=7)
    ckpt.close()


@pytest.mark.parametrize("pattern", ["variables/d/*", "variables/_METADATA", "meta/metadata"])
def test_load_variables_of_a_cut_step_falls_back_or_names_the_step(tmp_path, pattern):
    from ssd_jax.checkpoints import load_variables

    save_steps(tmp_path, [1, 2]).close()
    cut(tmp_path / "checkpoints" / "2", pattern)
    try:
        flat, _ = load_variables(tmp_path)
    except (ValueError, OSError, RuntimeError) as e:
        assert str(tmp_path / "checkpoints" / "2") in str(e)
    else:
        np.testing.assert_array_equal(flat[("params", "w")], np.full((2, 3), 1, np.float32))


# ---- 3. Faults: a full disk during a save, a data worker killed ----

_DISK_FULL_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from ssd_jax.training.checkpointing import CheckpointSaveError, TrainCheckpointer
    from test_checkpointing import tiny_state

    workdir, mode = sys.argv[1], sys.argv[2]
    ckpt = TrainCheckpointer(workdir, keep=5)
    ckpt.save(1, tiny_state(1), {"position": 1})
    if mode == "enospc":  # every write under the workdir fails with ENOSPC (tests/native)
        import ctypes
        ctypes.CDLL(None).enospc_arm(1)
    else:  # RLIMIT_FSIZE: writes past 512 bytes fail with EFBIG instead of raising SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
    result = {}
    try:
        ckpt.save(2, tiny_state(2), {"position": 2})
    except CheckpointSaveError as e:
        result["error"] = str(e)
    result["latest"] = ckpt.latest_step()
    ckpt.close()
    if mode == "enospc":
        ctypes.CDLL(None).enospc_arm(0)
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    ckpt = TrainCheckpointer(workdir, keep=5)  # as a resumed run would
    state, meta = ckpt.restore(tiny_state(0))
    result.update(restored=int(state.step), meta=meta)
    ckpt.save(2, tiny_state(2), {"position": 2})  # space again: the same step saves
    result["after_freeing"] = int(ckpt.restore(tiny_state(0))[0].step)
    print(json.dumps(result))
""")


def _enospc_shim(folder: pathlib.Path) -> str:
    """tests/native/enospc.c built into ``folder``: the LD_PRELOAD library that makes writes
    under $ENOSPC_DIR fail with ENOSPC once armed."""
    compiler = sysconfig.get_config_var("CC") or "cc"
    library = folder / "enospc.so"
    source = REPO / "tests" / "native" / "enospc.c"
    command = [*compiler.split(), "-shared", "-fPIC", "-O1", "-o", str(library), str(source)]
    subprocess.run([*command, "-ldl"], check=True, capture_output=True, timeout=120)
    return str(library)


@pytest.mark.parametrize("mode", ["enospc", "rlimit_fsize"])
def test_disk_full_during_a_save_raises_clearly_and_keeps_earlier_steps(tmp_path, mode):
    """ENOSPC from every write of the second save (an LD_PRELOAD shim, not a tmpfs: CI may not
    mount one), or EFBIG from a file size limit: a clear error, earlier steps intact, and the
    same step saves once there is space again."""
    workdir = tmp_path / "disk" / "run"
    env = dict(os.environ)
    if mode == "enospc":
        env.update(LD_PRELOAD=_enospc_shim(tmp_path), ENOSPC_DIR=str(workdir.resolve()))
    out = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_CHILD, str(workdir), mode, str(REPO / "tests")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" in result, (result, out.stderr[-3000:])
    reason = "disk full" if mode == "enospc" else "file size limit exceeded"
    assert result["error"].startswith(
        f"{reason} while saving step 2 to {workdir / 'checkpoints'}; earlier checkpoints are "
        "intact (latest complete step: 1)"
    )
    assert result["restored"] == 1 and result["meta"] == {"position": 1}
    assert result["latest"] == 1
    assert result["after_freeing"] == 2


def test_restore_after_a_config_change_is_refused_naming_the_differences(tmp_path):
    """A step saved for another model (the config changed between runs) is refused, with the
    differing entries named; restore never falls back to an older step of the old config."""
    from ssd_jax.checkpoints import CheckpointTreeMismatchError

    save_steps(tmp_path, [1, 2]).close()
    other = create_train_state(
        {
            "params": {"w": np.zeros((3, 3), np.float32), "c": np.zeros(2, np.float32)},
            "batch_stats": {},
        },
        optax.sgd(0.1, momentum=0.9),
        0,
    )
    ckpt = TrainCheckpointer(str(tmp_path), keep=5)
    with pytest.raises(CheckpointTreeMismatchError) as e:
        ckpt.restore(other)
    message = str(e.value)
    assert message.splitlines()[0].startswith("checkpoint step 2 in ")
    assert "saved for another model or config" in message.splitlines()[0]
    assert "params/c" in message and "params/b" in message
    assert "params/w: saved (2, 3) vs expected (3, 3)" in message
    # the same template restores the same steps
    state, meta = ckpt.restore(tiny_state(0))
    assert int(state.step) == 2 and meta == {"data_state": {"position": 2}}
