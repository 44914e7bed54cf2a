"""Fuzzing ``read_pth``: damaged or hostile ``.pth`` files load, or raise one of its two errors.

The cases start from small checkpoints written by torch (zip and legacy layouts, plain and
``.xz``) and damage them: cut at every structural boundary, bit-flipped, re-zipped with entries
renamed, duplicated or resized, storages of the wrong size, pickle opcodes mutated or replaced by
random opcode streams, and opcodes calling dangerous callables. ``read_pth`` must return or raise
``CheckpointFormatError`` / ``UnsafeCheckpointError`` naming the file: no other exception, no
hang (``bounded``), and no code from the file run. Hypothesis runs derandomized on fixed budgets,
so every run tries the same cases; the module prints how many it tried.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import io
import lzma
import os
import pickle
import pickletools
import signal
import struct
import sys
import warnings
import zipfile
from collections import OrderedDict
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from fuzz_cases import fuzz
from ssd_jax.porting.pth_reader import CheckpointFormatError, UnsafeCheckpointError, read_pth

torch = require("torch")  # CI (SSD_JAX_REQUIRE_FIXTURES) fails without it


SECONDS = 10  # hard limit per read; these files are a few KiB and read in milliseconds
CASES: collections.Counter[tuple[str, str]] = collections.Counter()  # (test, outcome) -> cases
WATCHDOG = {"file": sys.stderr}  # where faulthandler prints the stacks; see ``harness``


class Hang(BaseException):
    """Raised by ``bounded``; a BaseException so that no reader's ``except`` can swallow it."""


@contextlib.contextmanager
def bounded(seconds: float = SECONDS):
    """Fail the block if it runs past ``seconds`` (SIGALRM); if C code never returns to Python
    to notice, faulthandler kills the run at 3x, printing every thread's stack."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True, file=WATCHDOG["file"])
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def current_test() -> str:
    """The running test's function name (parameters left out)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?")  # "tests/x.py::test_y[param] (call)"
    return test.split("::")[-1].split(" ")[0].split("[")[0]


def outcome(path):
    """read_pth's result, or the CheckpointFormatError / UnsafeCheckpointError it raised.

    Any other exception propagates (failing the test), and so does running past ``SECONDS``.
    """
    try:
        with bounded():
            result = read_pth(path)
    except (CheckpointFormatError, UnsafeCheckpointError) as e:
        assert os.path.basename(path) in str(e), f"error does not name the file: {e}"
        CASES[current_test(), type(e).__name__] += 1
        return e
    except Hang as e:
        raise AssertionError(f"read_pth({path}) {e}") from None
    CASES[current_test(), "loaded"] += 1
    return result


def same(ours, expected) -> bool:
    """Equal values: dicts (same type and key order), lists, tuples, arrays (and dtypes)."""
    if isinstance(expected, np.ndarray):
        return (
            isinstance(ours, np.ndarray)
            and ours.dtype == expected.dtype
            and ours.shape == expected.shape
            and np.array_equal(ours, expected)
        )
    if isinstance(expected, dict):
        return (
            type(ours) is type(expected)
            and list(ours) == list(expected)
            and all(same(ours[k], expected[k]) for k in expected)
        )
    if isinstance(expected, (list, tuple)):
        return (
            type(ours) is type(expected)
            and len(ours) == len(expected)
            and all(map(same, ours, expected))
        )
    return type(ours) is type(expected) and ours == expected


def assert_loads_as(result, expected) -> None:
    assert not isinstance(result, Exception), f"should load, raised {result!r}"
    assert same(result, expected)


def assert_refused(result) -> None:
    assert isinstance(result, CheckpointFormatError), f"should be refused, got {result!r:.200}"


# ---- small valid checkpoints, written once by torch ----


def make_checkpoint() -> dict:
    """Tensors of several dtypes, strided and offset views of one storage, and metadata."""
    torch.manual_seed(0)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state_dict = OrderedDict(
        weight=torch.randn(2, 3),
        half=torch.randn(3).half(),
        index=torch.arange(4),
        mask=torch.tensor([True, False]),
        bf16=torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        transposed=base.t(),
        sliced=base.view(-1)[2:7],
        num_batches_tracked=torch.tensor(5),
    )
    return {
        "meta": {"epoch": 3, "classes": ("a", "b"), "lr": [0.1, 0.01], "none": None},
        "state_dict": state_dict,
    }


def torch_save(fmt: str) -> bytes:
    buffer = io.BytesIO()
    torch.save(make_checkpoint(), buffer, _use_new_zipfile_serialization=(fmt == "zip"))
    return buffer.getvalue()


def pickle_ends(data: bytes, start: int = 0) -> tuple[list[int], int]:
    """Offsets of each opcode of the pickle at ``start``, and the offset just past its STOP."""
    stream = io.BytesIO(data)
    stream.seek(start)
    return [pos for _, _, pos in pickletools.genops(stream)], stream.tell()


def legacy_sections(data: bytes) -> list[tuple[int, int]]:
    """(start, end) offsets of the legacy file's five pickles; the storage data follows."""
    spans, pos = [], 0
    for _ in range(5):  # magic number, protocol, sys_info, object pickle, storage keys
        _, end = pickle_ends(data, pos)
        spans.append((pos, end))
        pos = end
    return spans


def legacy_storages(data: bytes) -> dict[str, int]:
    """Storage key -> byte size, in the order the legacy file's object pickle first uses them."""
    itemsize = {
        "FloatStorage": 4,
        "HalfStorage": 2,
        "BFloat16Storage": 2,
        "LongStorage": 8,
        "BoolStorage": 1,
    }
    nbytes = {}

    class Recorder(pickle.Unpickler):  # reads our own file; builds no tensors
        def find_class(self, module, name):
            if module.startswith("torch"):
                return name if name.endswith("Storage") else (lambda *args: None)
            return super().find_class(module, name)

        def persistent_load(self, pid):
            _, storage_type, key, _, numel, *_ = pid
            nbytes.setdefault(key, numel * itemsize[storage_type])

    Recorder(io.BytesIO(data[slice(*legacy_sections(data)[3])])).load()
    return nbytes


def canonical_legacy(data: bytes) -> bytes:
    """The legacy file with its storages renamed 0, 1, ... in order of first use and the data
    section in that order: torch names them by memory address (sorted), which differs from run
    to run, and the cases must not."""
    spans, nbytes = legacy_sections(data), legacy_storages(data)
    records, pos = {}, spans[4][1]
    for key in pickle.loads(data[slice(*spans[4])]):
        records[key] = data[pos : pos + 8 + nbytes[key]]
        pos += 8 + nbytes[key]
    assert pos == len(data)

    def ops(value) -> bytes:  # the opcodes that push value (for a str: BINUNICODE)
        return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]

    obj = data[slice(*spans[3])]
    for i, key in enumerate(nbytes):
        obj = obj.replace(ops(key), ops(str(i)))
    keys = b"\x80\x02" + ops([str(i) for i in range(len(nbytes))]) + b"."
    return data[: spans[3][0]] + obj + keys + b"".join(records[k] for k in nbytes)


VALID = {"zip": torch_save("zip"), "legacy": canonical_legacy(torch_save("legacy"))}


def zip_entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def make_zip(entries) -> bytes:
    """An uncompressed zip of ``(name, payload)`` pairs in order (a repeated name is kept)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a repeated name
        for name, payload in entries:
            zf.writestr(name, payload)
    return buffer.getvalue()


ENTRIES = zip_entries(VALID["zip"])
ROOT = ENTRIES[0][0].split("/")[0]
PKL = dict(ENTRIES)[f"{ROOT}/data.pkl"]


LEGACY_PICKLES = legacy_sections(VALID["legacy"])


def legacy_count_offsets(data: bytes) -> list[int]:
    """Offset of each storage's int64 element count in a canonical legacy file."""
    offsets, pos = [], legacy_sections(data)[4][1]
    for size in legacy_storages(data).values():  # the data section is in this order
        offsets.append(pos)
        pos += 8 + size
    assert pos == len(data)
    return offsets


LEGACY_COUNTS = legacy_count_offsets(VALID["legacy"])


def with_legacy_object_pickle(pkl: bytes) -> bytes:
    """The legacy file with its object pickle replaced (headers, keys and data kept)."""
    data = VALID["legacy"]
    start, end = LEGACY_PICKLES[3]
    return data[:start] + pkl + data[end:]


def with_zip_entry(name: str, payload: bytes) -> bytes:
    return make_zip([(n, payload if n == name else p) for n, p in ENTRIES])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_pth")


@pytest.fixture(scope="module")
def expected(workdir):
    """read_pth of each intact file (tests/test_pth_reader.py checks it against torch.load)."""
    out = {}
    for fmt, data in VALID.items():
        out[fmt] = read_pth(write(workdir, data, name=f"ok_{fmt}.pth"))
        assert same(read_pth(write(workdir, data, xz=True, name=f"ok_{fmt}.pth")), out[fmt])
    assert same(out["legacy"], out["zip"])  # the same checkpoint (and canonical_legacy kept it)
    return out


@pytest.fixture(scope="module", autouse=True)
def harness(request):
    """Point the watchdog at the terminal (pytest's captured output is lost when faulthandler
    ends the process); at the end, print how many cases read_pth was given, by test/outcome."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        WATCHDOG["file"] = os.fdopen(os.dup(2), "w")
    yield
    per_test = collections.defaultdict(collections.Counter)
    for (test, result), n in CASES.items():
        per_test[test][result] += n
    lines = [f"fuzz read_pth: {sum(CASES.values())} cases"]
    lines += [f"  {test}: {dict(sorted(c.items()))}" for test, c in sorted(per_test.items())]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n".join(lines))
    WATCHDOG["file"].close()


def write(workdir, data: bytes, xz: bool = False, name: str = "case.pth"):
    path = workdir / (name + (".xz" if xz else ""))
    path.write_bytes(lzma.compress(data) if xz else data)
    return path


# ---- truncation at every structural boundary ----


def zip_boundaries(data: bytes) -> list[int]:
    """Start of each local header, each entry's data and each central directory record, the
    end of each entry's data, and the end-of-central-directory record."""
    cuts = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            cuts += [info.header_offset, start, start + info.compress_size]
        pos = zf.start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":
        cuts.append(pos)
        pos += 46 + sum(struct.unpack_from("<HHH", data, pos + 28))
    return sorted(set(cuts + [pos]))


def test_zip_cut_at_every_structural_boundary_is_refused(workdir):
    cuts = zip_boundaries(VALID["zip"])
    assert len(cuts) > 3 * len(ENTRIES)
    for cut in cuts:
        assert_refused(outcome(write(workdir, VALID["zip"][:cut])))


def test_zip_entry_cut_at_every_boundary(workdir, expected):
    """Each entry re-zipped cut short: the pickle at each opcode, each storage record and
    ``byteorder`` at every byte (each element boundary among them) are refused; the entries the
    reader does not use (version, .format_version, ...) still load as before."""
    for name, payload in ENTRIES:
        used = name.endswith(("/data.pkl", "/byteorder")) or "/data/" in name
        cuts = pickle_ends(payload)[0] if name.endswith("/data.pkl") else range(len(payload))
        for cut in cuts:
            result = outcome(write(workdir, with_zip_entry(name, payload[:cut])))
            if used:
                assert_refused(result)
            else:
                assert_loads_as(result, expected["zip"])


def test_legacy_cut_at_every_structural_boundary_is_refused(workdir, expected):
    """Cut at each opcode of the five pickles, and at every byte of the storage data (each
    int64 element count and each element boundary among them), plain and .xz."""
    data = VALID["legacy"]
    cuts = [pos for start, _ in LEGACY_PICKLES for pos in pickle_ends(data, start)[0]]
    cuts += range(LEGACY_PICKLES[-1][1], len(data))
    for cut in cuts:
        for xz in (False, True):
            assert_refused(outcome(write(workdir, data[:cut], xz=xz)))
    assert_loads_as(outcome(write(workdir, data, xz=True)), expected["legacy"])


@fuzz(60)
@given(fmt=st.sampled_from(sorted(VALID)), fraction=st.floats(0, 1, exclude_max=True))
def test_xz_stream_cut_anywhere_is_refused(workdir, fmt, fraction):
    packed = lzma.compress(VALID[fmt])
    path = workdir / "cut.pth.xz"
    path.write_bytes(packed[: int(fraction * len(packed))])
    assert_refused(outcome(path))


# ---- bit flips ----


@fuzz(300)
@given(
    fmt=st.sampled_from(sorted(VALID)),
    xz=st.booleans(),
    in_entry=st.booleans(),
    flips=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=4
    ),
    data=st.data(),
)
def test_bit_flips_load_or_are_refused(workdir, fmt, xz, in_entry, flips, data):
    """Flips anywhere in the file, or (zip) inside one entry re-zipped with a valid CRC."""

    def flipped(raw: bytes) -> bytes:
        out = bytearray(raw)
        for fraction, bit in flips:
            if out:
                out[int(fraction * len(out))] ^= 1 << bit
        return bytes(out)

    if fmt == "zip" and in_entry:
        name, payload = data.draw(st.sampled_from(ENTRIES), label="entry")
        damaged = with_zip_entry(name, flipped(payload))
    else:
        damaged = flipped(VALID[fmt])
    outcome(write(workdir, damaged, xz=xz))


# ---- zip entries renamed, duplicated, dropped, reordered ----

NAMES = [name for name, _ in ENTRIES]


@fuzz(200)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["rename", "duplicate", "drop", "move_first", "swap_payload"]),
            st.sampled_from(NAMES),
            st.sampled_from(
                NAMES + [f"{ROOT}/data/99", "other/data.pkl", f"{ROOT}/constants.pkl", "data.pkl"]
            ),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_zip_entries_renamed_duplicated_or_dropped(workdir, expected, edits):
    entries = list(ENTRIES)
    for action, name, other in edits:
        index = next((i for i, (n, _) in enumerate(entries) if n == name), None)
        if index is None:
            continue
        payload = entries[index][1]
        if action == "rename":
            entries[index] = (other, payload)
        elif action == "duplicate":  # a second entry of that name; zipfile reads the last
            entries.insert(index + 1, (name, payload if other == name else b"\0" * len(payload)))
        elif action == "drop":
            del entries[index]
        elif action == "move_first":
            entries.insert(0, entries.pop(index))
        else:
            entries[index] = (name, dict(ENTRIES).get(other, b""))
    result = outcome(write(workdir, make_zip(entries)))
    names = [n for n, _ in entries]
    if dict(entries) == dict(ENTRIES) and names[0].startswith(f"{ROOT}/"):
        assert_loads_as(result, expected["zip"])  # same content under the same names
    elif f"{ROOT}/data.pkl" not in names or names[0].split("/")[0] != ROOT:
        assert_refused(result)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, 99])
def test_zip_entry_claiming_compression_is_refused(workdir, method):
    """data.pkl's header says compressed (method 8, 12, 14 or unknown) but the bytes are not:
    bz2's OSError used to escape (found by fuzzing)."""
    data = bytearray(VALID["zip"])
    with zipfile.ZipFile(io.BytesIO(VALID["zip"])) as zf:
        info, central = zf.infolist()[0], zf.start_dir  # the first entry and its record
    assert info.filename == f"{ROOT}/data.pkl"
    struct.pack_into("<H", data, info.header_offset + 8, method)  # local file header
    struct.pack_into("<H", data, central + 10, method)  # central directory record
    assert_refused(outcome(write(workdir, bytes(data))))


# ---- storages of the wrong size ----


@fuzz(150)
@given(
    record=st.sampled_from([n for n in NAMES if "/data/" in n and "/.data/" not in n]),
    size=st.integers(0, 80),
)
def test_zip_storage_record_of_another_size(workdir, expected, record, size):
    """Shorter than its declared size: refused. Longer: the extra bytes are ignored."""
    payload = dict(ENTRIES)[record]
    resized = (payload * (size // max(len(payload), 1) + 1))[:size]
    result = outcome(write(workdir, with_zip_entry(record, resized)))
    if size < len(payload):
        assert_refused(result)
        assert "declared" in str(result)
    else:
        assert_loads_as(result, expected["zip"])


@fuzz(150)
@given(
    pos=st.sampled_from(LEGACY_COUNTS),
    count=st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 40),
    extra=st.binary(max_size=16),
)
def test_legacy_storage_count_of_another_size(workdir, expected, pos, count, extra):
    """A storage's element count unlike the one its pickle declares is refused; bytes after
    the last storage are ignored."""
    data = bytearray(VALID["legacy"])
    (declared,) = struct.unpack_from("<q", data, pos)
    struct.pack_into("<q", data, pos, count)
    result = outcome(write(workdir, bytes(data) + extra))
    if count == declared:
        assert_loads_as(result, expected["legacy"])
    else:
        assert_refused(result)


@fuzz(300)
@given(
    numel=st.integers(-3, 12),
    record_len=st.integers(0, 12),
    offset=st.integers(-1, 12),
    shape=st.lists(st.integers(0, 4), max_size=3),
    data=st.data(),
)
def test_tensor_geometry_against_storage_size(workdir, numel, record_len, offset, shape, data):
    """A hand-pickled float32 tensor: it loads, equal to the strided view of the record's
    bytes, exactly when the record holds ``numel`` elements and the view stays inside them."""
    stride = data.draw(
        st.lists(st.integers(-1, 5), min_size=len(shape), max_size=len(shape)), label="stride"
    )
    record = np.arange(record_len, dtype="<f4")

    class StorageRef:
        pass

    ref = StorageRef()

    class Tensor:
        def __reduce__(self):
            return (
                torch._utils._rebuild_tensor_v2,
                (ref, offset, tuple(shape), tuple(stride), False, OrderedDict()),
            )

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is ref else None

    pkl = io.BytesIO()
    Writer(pkl, protocol=2).dump({"w": Tensor()})
    result = outcome(
        write(
            workdir,
            make_zip([("archive/data.pkl", pkl.getvalue()), ("archive/data/0", record.tobytes())]),
        )
    )
    empty = 0 in shape
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
    fits = (
        0 <= numel <= record_len
        and offset >= 0
        and min(stride, default=0) >= 0
        and (empty or last < numel)
    )
    if not fits:
        assert_refused(result)
        return
    want = np.zeros(shape, np.float32)
    if not empty:
        want[...] = np.lib.stride_tricks.as_strided(
            record[offset:], shape, [4 * s for s in stride], writeable=False
        )
    assert_loads_as(result, {"w": want})


# ---- pickle opcodes: mutated, random, dangerous ----


def _arg_bytes(arg) -> st.SearchStrategy[bytes]:
    """Bytes for one opcode argument: mostly well formed (small numbers, short data, a
    length that matches), sometimes not."""
    if arg is None:
        return st.just(b"")
    small = st.integers(0, 6)
    if arg.n > 0:  # fixed width: uint1, uint2, int4, uint4, uint8, float8
        return small.map(lambda v: v.to_bytes(arg.n, "little")) | st.binary(
            min_size=arg.n, max_size=arg.n
        )
    if arg.n == pickletools.UP_TO_NEWLINE:
        if arg.name == "stringnl_noescape_pair":
            return st.sampled_from(GLOBAL_NAMES).map(lambda mn: f"{mn[0]}\n{mn[1]}\n".encode())
        lines = [b"0", b"1", b"-3", b"99999999999", b"1.5", b"'a'", b"a", b"nan", b"", b"\xff"]
        return (st.sampled_from(lines) | st.binary(max_size=6)).map(lambda b: b + b"\n")
    width = {
        pickletools.TAKEN_FROM_ARGUMENT1: 1,
        pickletools.TAKEN_FROM_ARGUMENT4: 4,
        pickletools.TAKEN_FROM_ARGUMENT4U: 4,
        pickletools.TAKEN_FROM_ARGUMENT8U: 8,
    }[arg.n]
    payload = st.sampled_from([b"storage", b"cpu", b"0", b"a"]) | st.binary(max_size=8)
    length = st.none() | st.integers(0, 2 ** (8 * width) - 1)
    return st.tuples(payload, length).map(
        lambda pl: (len(pl[0]) if pl[1] is None else pl[1]).to_bytes(width, "little") + pl[0]
    )


# Globals the reader allows, and ones that would run code.
GLOBAL_NAMES = [
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "LongStorage"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("builtins", "set"),
    ("__builtin__", "set"),
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("mmengine.config.config", "ConfigDict"),
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("__builtin__", "exec"),
    ("subprocess", "Popen"),
    ("builtins", "getattr"),
    ("copy_reg", "_reconstructor"),
]
OPCODE = st.sampled_from(pickletools.opcodes).flatmap(
    lambda op: _arg_bytes(op.arg).map(lambda a: op.code.encode("latin-1") + a)
)


def place(pkl: bytes, where: str) -> bytes:
    """A file whose object pickle is ``pkl``: alone (read as the legacy layout's first pickle),
    as a zip's data.pkl (storages present) or as a legacy file's object pickle."""
    if where == "plain":
        return pkl
    if where == "zip":
        return with_zip_entry(f"{ROOT}/data.pkl", pkl)
    return with_legacy_object_pickle(pkl)


@fuzz(500)
@given(ops=st.lists(OPCODE, max_size=40), where=st.sampled_from(["plain", "zip", "legacy"]))
def test_random_opcode_streams_load_or_are_refused(workdir, ops, where):
    with mock.patch("os.system") as system, mock.patch("subprocess.Popen") as popen:
        outcome(write(workdir, place(b"\x80\x02" + b"".join(ops) + b".", where)))
    assert not system.called and not popen.called


def constant_ops(value) -> bytes:
    """The opcodes that push ``value`` (protocol 2, no memo)."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


STORAGE_PID = (
    b"("
    + constant_ops("storage")
    + b"ctorch\nFloatStorage\n"
    + constant_ops("0")
    + constant_ops("cpu")
    + b"K\x02tQ"
)  # persistent id of 2 floats in record 0
CONSTANT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=6),
    st.sampled_from(["storage", "cpu", "0"]),
    st.integers(-1, 3),
).map(constant_ops)
LEAF = st.one_of(
    CONSTANT,
    CONSTANT,  # twice as likely as each of the others
    st.sampled_from(GLOBAL_NAMES).map(lambda mn: f"c{mn[0]}\n{mn[1]}\n".encode()),
    st.integers(0, 3).map(lambda k: b"h" + bytes([k])),  # BINGET, maybe of nothing
    st.just(STORAGE_PID),
)


def _combine(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Opcodes pushing one value built from values that ``children`` push."""
    items = st.lists(children, max_size=4).map(b"".join)
    return st.one_of(
        items.map(lambda b: b"(" + b + b"t"),  # tuple
        items.map(lambda b: b"](" + b + b"e"),  # list
        st.lists(st.tuples(children, children), max_size=3).map(
            lambda kv: b"}(" + b"".join(k + v for k, v in kv) + b"u"
        ),  # dict
        st.tuples(st.sampled_from(GLOBAL_NAMES), items).map(  # call
            lambda c: f"c{c[0][0]}\n{c[0][1]}\n".encode() + b"(" + c[1] + b"tR"
        ),
        items.map(
            lambda b: (
                b"ctorch._utils\n_rebuild_tensor_v2\n("
                + STORAGE_PID
                + b  # tensor
                + b"tR"
            )
        ),
        st.tuples(children, children).map(lambda c: c[0] + c[1] + b"b"),  # BUILD
        st.tuples(children, st.integers(0, 3)).map(lambda c: c[0] + b"q" + bytes([c[1]])),
    )


VALUE = st.recursive(LEAF, _combine, max_leaves=24)


@fuzz(500)
@given(value=VALUE, where=st.sampled_from(["zip", "zip", "legacy", "plain"]))
def test_generated_pickles_load_or_are_refused(workdir, value, where):
    """Well-formed pickles built at random from constants, allowed and dangerous globals, calls,
    BUILD, persistent ids and memo references: allowed callables get arbitrary arguments."""
    with mock.patch("os.system") as system, mock.patch("subprocess.Popen") as popen:
        outcome(write(workdir, place(b"\x80\x02" + value + b".", where)))
    assert not system.called and not popen.called


def op_slices(pkl: bytes) -> list[bytes]:
    offsets, end = pickle_ends(pkl)
    return [pkl[a:b] for a, b in zip(offsets, offsets[1:] + [end])]


@fuzz(400)
@given(
    fmt=st.sampled_from(["zip", "legacy"]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "flip"]),
            st.floats(0, 1, exclude_max=True),
            OPCODE,
            st.integers(0, 7),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_checkpoint_pickles_load_or_are_refused(workdir, fmt, edits):
    """The real object pickle with opcodes deleted, repeated, swapped, replaced, inserted or
    with a bit of their argument flipped."""
    start, end = (0, len(PKL)) if fmt == "zip" else LEGACY_PICKLES[3]
    ops = op_slices((PKL if fmt == "zip" else VALID["legacy"])[start:end])
    for action, fraction, new_op, bit in edits:
        i = int(fraction * len(ops))
        if action == "delete":
            del ops[i]
        elif action == "duplicate":
            ops.insert(i, ops[i])
        elif action == "swap" and i + 1 < len(ops):
            ops[i], ops[i + 1] = ops[i + 1], ops[i]
        elif action == "replace":
            ops[i] = new_op
        elif action == "insert":
            ops.insert(i, new_op)
        elif action == "flip" and len(ops[i]) > 1:
            arg = bytearray(ops[i])
            arg[1 + bit % (len(arg) - 1)] ^= 1 << bit
            ops[i] = bytes(arg)
        if not ops:
            break
    outcome(write(workdir, place(b"".join(ops), fmt)))


def unicode_op(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


DANGEROUS = [
    ("os", "system"),
    ("posix", "system"),
    ("os", "popen"),
    ("os", "execv"),
    ("subprocess", "Popen"),
    ("subprocess", "run"),
    ("subprocess", "check_output"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("__builtin__", "eval"),
    ("builtins", "open"),
    ("builtins", "__import__"),
    ("builtins", "getattr"),
    ("importlib", "import_module"),
    ("pickle", "loads"),
    ("shutil", "rmtree"),
    ("runpy", "_run_code"),
    ("torch", "load"),
    ("numpy", "load"),
    ("functools", "partial"),
    ("operator", "attrgetter"),
    ("types", "FunctionType"),
    ("copyreg", "_reconstructor"),
    ("nt", "system"),
    ("webbrowser", "open"),
]


def dangerous_fragment(module: str, name: str, ref: str, call: str, arg: bytes) -> bytes:
    """Opcodes that push ``module.name(arg)`` (or the callable, for BUILD) onto the stack."""
    if call == "INST":  # MARK args INST module name: looks up and calls in one opcode
        return b"(" + arg + b"i" + f"{module}\n{name}\n".encode()
    if ref == "GLOBAL":
        callable_ = b"c" + f"{module}\n{name}\n".encode()
    else:  # STACK_GLOBAL, the callable memoized and fetched back
        callable_ = unicode_op(module) + unicode_op(name) + b"\x93\x940h\x00"
    return {
        "REDUCE": callable_ + b"(" + arg + b"tR",
        "OBJ": b"(" + callable_ + arg + b"o",
        "NEWOBJ": callable_ + b"(" + arg + b"t\x81",
        "NEWOBJ_EX": callable_ + b"(" + arg + b"t}\x92",
        "BUILD": b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R"
        + b"N}"
        + unicode_op("x")
        + callable_
        + b"s\x86b",  # an allowed object given state holding the callable
    }[call]


@fuzz(400)
@given(
    target=st.sampled_from(DANGEROUS),
    ref=st.sampled_from(["GLOBAL", "STACK_GLOBAL"]),
    call=st.sampled_from(["REDUCE", "OBJ", "NEWOBJ", "NEWOBJ_EX", "INST", "BUILD"]),
    nest=st.sampled_from(["top", "dict", "list", "tuple"]),
    where=st.sampled_from(["plain", "zip", "legacy"]),
    xz=st.booleans(),
)
def test_pickles_naming_dangerous_callables_run_nothing(
    workdir, target, ref, call, nest, where, xz
):
    sentinel = workdir / "pwned"
    canary = workdir / "canary"
    canary.mkdir(exist_ok=True)
    arg = unicode_op(
        {"shutil": str(canary)}.get(target[0], f"touch {sentinel}")
        if target[0] in ("os", "posix", "nt", "subprocess", "shutil")
        else f"open({str(sentinel)!r}, 'w').close()"
    )
    fragment = dangerous_fragment(*target, ref, call, arg)
    wrap = {
        "top": fragment,
        "dict": b"}" + unicode_op("k") + fragment + b"s",
        "list": b"]" + fragment + b"a",
        "tuple": b"(" + fragment + b"K\x01t",
    }[nest]
    patches = [
        mock.patch(f"{m}.{n}")
        for m, n in [
            ("os", "system"),
            ("os", "popen"),
            ("os", "execv"),
            ("subprocess", "Popen"),
            ("shutil", "rmtree"),
        ]
    ]
    with contextlib.ExitStack() as stack:
        mocks = [stack.enter_context(p) for p in patches]
        result = outcome(write(workdir, place(b"\x80\x02" + wrap + b".", where), xz=xz))
    assert isinstance(result, UnsafeCheckpointError), f"{target}: {result!r:.200}"
    assert f"{target[0]}.{target[1]}" in str(result)
    assert not any(m.called for m in mocks)
    assert not sentinel.exists() and canary.is_dir()


def test_exponential_or_deep_pickles_are_refused_quickly(workdir):
    """60 tuples each holding the previous twice (2**60 values, which the unpickler would
    hash for ever as a dict key), and tuples nested 100,000 deep (hashing them overflowed the
    C stack: a crash): refused before unpickling."""
    laughs = (
        b"\x80\x02})q\x000"
        + b"".join(
            b"h" + bytes([k]) + b"h" + bytes([k]) + b"\x86q" + bytes([k + 1]) + b"0"
            for k in range(60)
        )
        + b"h<K\x01s."
    )
    deep = b"\x80\x02})" + b"\x85" * 100_000 + b"K\x01s."
    for pkl, message in [(laughs, "shared references"), (deep, "nested")]:
        for where in ("plain", "zip", "legacy"):
            result = outcome(write(workdir, place(pkl, where)))
            assert_refused(result)
            assert message in str(result)
