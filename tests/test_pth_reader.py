"""Tests for ssd_jax.porting.pth_reader against torch.load(..., weights_only=True)."""

from __future__ import annotations

import io
import lzma
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from conftest import checkpoint_file, fixture_dir, require

torch = require("torch")  # CI (SSD_JAX_REQUIRE_FIXTURES) fails without it

try:
    from numpy._core import multiarray as np_multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as np_multiarray

from ssd_jax.porting.pth_reader import (  # noqa: E402
    CheckpointFormatError,
    TorchDtype,
    UnsafeCheckpointError,
    read_pth,
)

FORMATS = ["zip", "legacy"]


def save(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def assert_same(ours, ref, where="root"):
    """Recursively compare read_pth's result with torch.load's."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, np.ndarray), where
        expected = ref.detach().numpy()
        assert ours.dtype == expected.dtype, where
        assert ours.shape == expected.shape, where
        assert ours.flags.c_contiguous, where
        np.testing.assert_array_equal(ours, expected, err_msg=where)
    elif isinstance(ref, dict):
        assert type(ours) is type(ref), where
        assert list(ours) == list(ref), where
        for key in ref:
            assert_same(ours[key], ref[key], f"{where}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == ref and type(ours) is type(ref), where


def make_checkpoint():
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state_dict = OrderedDict(
        weight=torch.randn(3, 4),
        half=torch.randn(5).half(),
        index=torch.arange(7),
        mask=torch.tensor([True, False, True]),
        num_batches_tracked=torch.tensor(5),
        transposed=base.t(),
        sliced=base[1:3, 2:5],
        shared_a=base,
        shared_b=base.view(-1)[5:17],
        param=torch.nn.Parameter(torch.randn(2, 2)),
    )
    assert state_dict["sliced"].storage_offset() == 8
    meta = {"epoch": 3, "classes": ("a", "b"), "lr": [0.1, 0.01], "none": None, "flag": True}
    return {"meta": meta, "state_dict": state_dict}


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_torch_load(tmp_path, fmt):
    path = save(make_checkpoint(), tmp_path / "ckpt.pth", fmt)
    ours = read_pth(path)
    assert_same(ours, torch.load(path, weights_only=True))
    assert isinstance(ours["state_dict"], OrderedDict)
    assert ours["state_dict"]["num_batches_tracked"].shape == ()
    assert ours["state_dict"]["num_batches_tracked"].dtype == np.int64
    # tensors sharing a storage come back as independent copies
    ours["state_dict"]["shared_a"][0, 0] = -1.0
    assert ours["state_dict"]["shared_b"][0] == 5.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_xz_and_extra_values(tmp_path, fmt):
    obj = {
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
        "set": {1, 2},
        "frozen": frozenset({3}),
        "slice": slice(1, 5, 2),
        "complex": complex(1, 2),
        "bytes": b"\x00\xffxy",
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "u16": torch.tensor([1, 2, 65535], dtype=torch.int32).to(torch.uint16),
    }
    path = save(obj, tmp_path / "extra.pth", fmt)
    xz = tmp_path / "extra.pth.xz"
    xz.write_bytes(lzma.compress(path.read_bytes()))
    ours = read_pth(str(xz))
    assert ours["dtype"] == TorchDtype("float16") and ours["dtype"].numpy == np.float16
    assert ours["size"] == (2, 3)
    assert ours["set"] == {1, 2} and ours["frozen"] == frozenset({3})
    assert ours["slice"] == slice(1, 5, 2) and ours["complex"] == complex(1, 2)
    assert ours["bytes"] == b"\x00\xffxy"
    np.testing.assert_array_equal(ours["bf16"].astype(np.float32), [1.5, -2.0])
    assert ours["bf16"].dtype.name == "bfloat16"
    assert ours["u16"].dtype == np.uint16 and ours["u16"].tolist() == [1, 2, 65535]


def test_mmengine_objects_become_inert(tmp_path, monkeypatch):
    """HistoryBuffer/MessageHub/ConfigDict are restored as stand-ins, without mmengine."""
    names = {
        "HistoryBuffer": "mmengine.logging.history_buffer",
        "MessageHub": "mmengine.logging.message_hub",
        "ConfigDict": "mmengine.config.config",
    }
    classes = {}
    for parent in ("mmengine", "mmengine.logging", "mmengine.config"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    for cls_name, mod_name in names.items():
        module = types.ModuleType(mod_name)
        bases = (dict,) if cls_name == "ConfigDict" else (object,)
        cls = type(cls_name, bases, {"__module__": mod_name})
        if cls_name == "ConfigDict":  # as mmengine: rebuilt from a plain dict of its items
            cls.__reduce_ex__ = lambda self, proto: (type(self), (dict(self),), None, None, None)
        setattr(module, cls_name, cls)
        monkeypatch.setitem(sys.modules, mod_name, module)
        classes[cls_name] = cls
    buf = classes["HistoryBuffer"]()
    buf._log_history = np.array([1.0, 2.5])
    buf._count_history = np.array([1, 1])
    buf.max_length = np.int64(10)
    hub = classes["MessageHub"]()
    hub.log_scalars = {"loss": buf}
    cfg = classes["ConfigDict"](type="SSD", lr=np.float64(0.1))
    path = save(
        {"message_hub": hub, "cfg": cfg, "state_dict": {"w": torch.ones(2)}},
        tmp_path / "mm.pth",
        "zip",
    )
    for mod_name in (*names.values(), "mmengine", "mmengine.logging", "mmengine.config"):
        monkeypatch.delitem(sys.modules, mod_name)

    ours = read_pth(path)
    history = ours["message_hub"].log_scalars["loss"]
    assert type(history).__name__ == "HistoryBuffer"
    assert isinstance(history._log_history, np.ndarray)
    assert history._log_history.dtype == np.float64 and history._count_history.dtype == np.int64
    np.testing.assert_array_equal(history._log_history, [1.0, 2.5])
    assert history.max_length == 10 and type(history.max_length) is np.int64
    assert dict(ours["cfg"]) == {"type": "SSD", "lr": 0.1}
    np.testing.assert_array_equal(ours["state_dict"]["w"], [1.0, 1.0])


class Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("fmt", FORMATS + ["plain-pickle"])
def test_refuses_code_execution(tmp_path, fmt):
    marker = tmp_path / "pwned"
    obj = {"state_dict": {"w": torch.ones(2)}, "evil": Evil(f"touch {marker}")}
    path = tmp_path / "checkpoint.pth"
    if fmt == "plain-pickle":  # no tensors: stdlib pickle would go through _load_from_bytes
        obj["state_dict"] = {"w": [1.0, 2.0]}
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        save(obj, path, fmt)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_pth(path)
    message = str(info.value)
    assert "os.system" in message or "posix.system" in message
    assert "checkpoint.pth" in message and "arbitrary code" in message
    assert not marker.exists()


class _Reduced:
    """Pickles as ``func(*args)`` followed by BUILD(state) — to hand-craft hostile pickles."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def test_numpy_arrays_and_scalars_in_pickle(tmp_path):
    values = {
        "f": np.arange(6.0).reshape(2, 3),
        "i": np.array([1, -2], dtype=">i4"),
        "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
        "u": np.array(["ab", "c"]),
        "scalar": np.float32(1.5),
        "int": np.int64(-7),
        "empty": np.zeros((0, 4)),
    }
    ours = read_pth(save(values, tmp_path / "np.pth", "zip"))
    for key, value in values.items():
        expected = pickle.loads(pickle.dumps(value, protocol=2))  # what numpy itself restores
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)
        assert np.asarray(ours[key]).dtype == np.asarray(expected).dtype, key
    assert type(ours["scalar"]) is np.float32


def test_object_numpy_array_is_refused(tmp_path):
    path = save({"o": np.array([1, "x"], dtype=object)}, tmp_path / "obj.pth", "zip")
    with pytest.raises(CheckpointFormatError):
        read_pth(path)


def test_forged_numpy_dtype_is_refused(tmp_path):
    """A dtype state hiding an object field would make numpy dereference raw bytes."""
    forged_state = (3, "|", None, ("x",), {"x": (np.dtype("O"), 0)}, 8, 1, 0)
    dtype = _Reduced(np.dtype, ("V8", False, True), forged_state)
    array = _Reduced(
        np_multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), dtype, False, b"\x41" * 8)
    )
    scalar = _Reduced(np_multiarray.scalar, (dtype, b"\x41" * 8))
    for name, obj in {"array": array, "scalar": scalar}.items():
        path = tmp_path / f"forged_{name}.pth"
        path.write_bytes(pickle.dumps({"x": obj}, protocol=2))
        with pytest.raises(CheckpointFormatError, match="numpy"):
            read_pth(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(tmp_path, fmt):
    data = save(make_checkpoint(), tmp_path / "full.pth", fmt).read_bytes()
    cut = tmp_path / "cut.pth"
    for length in (len(data) // 2, len(data) - 3, 20):
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointFormatError, match="cut.pth") as info:
            read_pth(cut)
        if fmt == "legacy" and length == len(data) - 3:
            assert "truncated" in str(info.value)
    xz = tmp_path / "cut.pth.xz"
    packed = lzma.compress(data)
    xz.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(CheckpointFormatError, match="cut.pth.xz"):
        read_pth(xz)


def test_zip_storage_shorter_than_declared(tmp_path):
    src = save({"w": torch.arange(10, dtype=torch.float32)}, tmp_path / "ok.pth", "zip")
    bad = tmp_path / "short.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            payload = zin.read(info)
            if info.filename.endswith("/data/0"):
                payload = payload[:12]
            zout.writestr(info.filename, payload)
    with pytest.raises(CheckpointFormatError, match="12 bytes"):
        read_pth(bad)


def write_zip(path: Path, pkl: bytes, storages: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        for key, payload in storages.items():
            zf.writestr(f"archive/data/{key}", payload)
        zf.writestr("archive/version", "3\n")
    return path


def test_storage_state_cannot_be_overwritten(tmp_path):
    """BUILD on a storage (to enlarge its declared size) is refused."""
    pkl = (
        b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
        b"X\x03\x00\x00\x00cpuK\x04tQ}X\x05\x00\x00\x00numelJ\x00\x00\x00\x10sb."
    )
    path = write_zip(tmp_path / "build.pth", pkl, {"0": bytes(16)})
    with pytest.raises(CheckpointFormatError, match="unexpected state"):
        read_pth(path)


def test_out_of_bounds_view_is_refused(tmp_path):
    """A hand-made tensor whose size/stride reaches past its storage is rejected, not read."""

    class StorageRef:
        pass

    ref = StorageRef()

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (ref, 2, (100,), (1,), False, OrderedDict()))

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj is ref else None

    pkl = io.BytesIO()
    Writer(pkl, protocol=2).dump({"w": Tensor()})
    path = write_zip(
        tmp_path / "oob.pth", pkl.getvalue(), {"0": np.arange(4, dtype="<f4").tobytes()}
    )
    with pytest.raises(CheckpointFormatError, match="overruns storage"):
        read_pth(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_pth(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="junk.pth"):
        read_pth(path)


FIXTURE_NAMES = {"ssd300_coco": "zip", "ssdlite_mobilenetv2_320_coco": "legacy"}


@pytest.fixture(scope="module", params=sorted(FIXTURE_NAMES))
def fixture_pair(request):
    path = fixture_dir(request.param) / "checkpoint.pth.xz"  # skips, or fails in CI, if absent
    raw = checkpoint_file(request.param).read_bytes()  # decompressed once per run, not here
    reference = torch.load(io.BytesIO(raw), weights_only=True)
    return request.param, raw, read_pth(path), reference


def test_real_fixture_state_dict(fixture_pair):
    name, raw, ours, reference = fixture_pair
    assert (raw[:4] == b"PK\x03\x04") == (FIXTURE_NAMES[name] == "zip")
    assert list(ours["state_dict"]) == list(reference["state_dict"])
    for key, tensor in reference["state_dict"].items():
        value = ours["state_dict"][key]
        expected = tensor.numpy()
        assert value.dtype == expected.dtype and value.shape == expected.shape, key
        np.testing.assert_array_equal(value, expected, err_msg=key)
    assert_same(ours["meta"], reference["meta"])
