"""Read PyTorch ``.pth`` checkpoints as numpy, without torch and without running code from the file.

``torch.save`` writes one of two layouts; both are read here, following ``torch/serialization.py``:

* **zip** (default since torch 1.6): an uncompressed zip whose entries share one root folder,
  ``<root>/data.pkl`` (the object pickle), ``<root>/data/<key>`` (each storage's raw bytes),
  ``<root>/byteorder`` (``little``/``big``; absent means little) and ``<root>/version``.
  Persistent ids are ``('storage', storage_type, key, location, numel)``.
* **legacy** (``_use_new_zipfile_serialization=False``): consecutive pickles — magic number,
  protocol version, sys_info, the object pickle (persistent ids
  ``('storage', storage_type, root_key, location, numel, view_metadata)``), the list of storage
  keys — then for each key in that order an int64 little-endian element count and the raw
  little-endian bytes.

A tensor is ``_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`` with offset and
strides counted in elements; it comes back as a C-contiguous numpy copy of that strided view.
Every global the pickle names goes through an allow-list (``_SafeUnpickler.find_class``), so a
file that references anything else is refused before any of its code could run. The file never
gets numpy's own reconstruction functions either: a pickled ``numpy.dtype`` state can forge a
dtype that hides an object field, which would make numpy read raw bytes as object pointers. It
gets inert stand-ins instead, and only plain numeric/string dtypes are ever built from them.
"""

from __future__ import annotations

import _compat_pickle
import io
import lzma
import operator
import os
import pickle
import pickletools
import reprlib
import struct
import types
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ssd_jax.errors import UserError

__all__ = [
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "TorchDtype",
    "PickledArray",
    "read_pth",
]


class UnsafeCheckpointError(UserError, ValueError):
    """The file references a callable or class that is not on the allow-list."""


class CheckpointFormatError(UserError, ValueError):
    """The file is truncated, corrupt, or not a ``torch.save`` checkpoint."""


#: torch dtype names that numpy lacks; ml_dtypes (a JAX dependency) has them. Imported on first
#: use (half a second), so that ``python -m ssd_jax.porting --help`` is quick.
_ML_DTYPES = (
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
)


def _numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype of a torch dtype name (KeyError when unknown; None when neither numpy nor
    ml_dtypes can represent it)."""
    if name not in _ML_DTYPES:
        return _TORCH_DTYPES[name]
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover
        return None
    return np.dtype(getattr(ml_dtypes, name))


#: torch dtype name -> numpy dtype (None: see ``_numpy_dtype``).
_TORCH_DTYPES: dict[str, np.dtype | None] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": None,
    "float8_e4m3fn": None,
    "float8_e5m2": None,
    "float8_e4m3fnuz": None,
    "float8_e5m2fnuz": None,
    "float8_e8m0fnu": None,
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"),
    "uint32": np.dtype("<u4"),
    "uint16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
    "complex64": np.dtype("<c8"),
    "complex128": np.dtype("<c16"),
}
#: legacy typed storage class name -> torch dtype name of its elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


#: Deepest nesting of values a pickle may build: ``pickle.dumps`` stops at Python's recursion
#: limit (1000) itself, and hashing a much deeper tuple overflows the C stack (a crash).
_MAX_PICKLE_DEPTH = 1000
#: Most values a pickle's objects may hold when shared references are counted each time they
#: occur (what ``repr``, ``str`` and tuple hashing walk). A tiny pickle can nest 60 tuples that
#: each hold the previous one twice: 2**60 values, and the unpickler would hash them for ever.
_MAX_PICKLE_EXPANSION = 10**7
#: Opcodes that add the values above them to the object below them (its children grow).
_IN_PLACE_OPS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


def _check_pickle(stream: io.BytesIO, path: str) -> None:
    """Check the pickle at the stream's position without executing anything.

    ``pickletools.genops`` checks that every counted length fits in the data. This also
    emulates the unpickler's stack and memo (no values, only which object holds which), so it
    rejects stack underflows, unknown memo indices, memo indices beyond the opcode count (a huge
    one makes the C unpickler allocate gigabytes for its memo table), and object graphs nested
    deeper than ``_MAX_PICKLE_DEPTH`` or expanding to more than ``_MAX_PICKLE_EXPANSION``
    values. Every value a call or container is built from counts as held by it (an upper bound).
    """
    children: list[list[int]] = []  # object i holds objects children[i]
    stack: list[int] = []
    marks: list[int] = []  # stack lengths at each MARK, as the C unpickler keeps them
    memo: dict[int, int] = {}

    def pop(count: int) -> list[int]:
        if len(stack) - count < (marks[-1] if marks else 0):
            raise CheckpointFormatError(f"{path}: corrupt pickle (stack underflow)")
        popped = stack[len(stack) - count :]
        del stack[len(stack) - count :]
        return popped

    for count, (op, arg, _) in enumerate(pickletools.genops(stream), 1):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(memo) if op.name == "MEMOIZE" else int(arg)
            if index > count:
                raise CheckpointFormatError(f"{path}: corrupt pickle (memo index {arg})")
            memo[index] = pop(1)[0]
            stack.append(memo[index])
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise CheckpointFormatError(f"{path}: corrupt pickle (memo index {arg} unset)")
            stack.append(memo[arg])
        elif op.name == "DUP":
            stack.extend(pop(1) * 2)
        elif op.name == "MARK":
            marks.append(len(stack))
        elif op.name == "POP" and marks and marks[-1] == len(stack):
            marks.pop()
        elif not op.stack_before:  # a constant, global or empty container
            if op.stack_after:
                stack.append(len(children))
                children.append([])
        else:
            before = op.stack_before
            if pickletools.markobject in before:  # the values above the mark, and some below it
                if not marks:
                    raise CheckpointFormatError(f"{path}: corrupt pickle (no MARK)")
                above = stack[marks[-1] :]
                del stack[marks.pop() :]
                popped = pop(before.index(pickletools.markobject)) + above
            else:
                popped = pop(len(before))
            if op.name in _IN_PLACE_OPS:
                children[popped[0]].extend(popped[1:])
                stack.append(popped[0])
            elif op.stack_after:
                stack.append(len(children))
                children.append(popped)
    depth, expansion = _graph_extent(children)
    if depth > _MAX_PICKLE_DEPTH:
        raise CheckpointFormatError(f"{path}: corrupt pickle (values nested {depth} deep)")
    if expansion > _MAX_PICKLE_EXPANSION:
        raise CheckpointFormatError(
            f"{path}: corrupt pickle (more than {_MAX_PICKLE_EXPANSION} "
            "values when shared references are counted each time)"
        )


def _graph_extent(children: list[list[int]]) -> tuple[int, int]:
    """(longest chain, largest count of values under one object) of an object graph.

    Shared objects are counted at each reference; a reference back to an object being
    visited (a cycle) counts as one value. Iterative, so that deep graphs cannot overflow.
    """
    depth, size = [1] * len(children), [1] * len(children)
    state = bytearray(len(children))  # 0 unseen, 1 being visited, 2 done
    for root, root_children in enumerate(children):
        if state[root] or not root_children:
            continue
        todo = [root]
        while todo:
            node = todo[-1]
            if state[node] == 0:
                state[node] = 1
                todo.extend(c for c in children[node] if state[c] == 0 and children[c])
                continue
            todo.pop()
            if state[node] == 1:
                state[node] = 2
                kids = children[node]  # unvisited leaves count 1, cycles too (depth/size 1)
                depth[node] = 1 + max(depth[c] if state[c] != 1 else 1 for c in kids)
                size[node] = min(
                    _MAX_PICKLE_EXPANSION + 1,
                    1 + sum(size[c] if state[c] != 1 else 1 for c in kids),
                )
    return max(depth, default=0), max(size, default=0)


class _NoState:
    """Mixin for the reader's own objects: the file may not overwrite their state (BUILD)."""

    def __setstate__(self, state: Any) -> None:
        raise CheckpointFormatError(f"unexpected state for {type(self).__name__}")


@dataclass(frozen=True)
class TorchDtype(_NoState):
    """A ``torch.dtype`` value stored in the checkpoint (e.g. ``torch.float32``), kept by name."""

    name: str

    @property
    def numpy(self) -> np.dtype | None:
        """The matching numpy dtype, or None if there is none."""
        return _numpy_dtype(self.name) if self.name in _TORCH_DTYPES else None

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True)
class _StorageType(_NoState):
    """Stand-in for ``torch.FloatStorage`` & co: only says which dtype a storage holds (not
    callable)."""

    name: str
    dtype: str


@dataclass(frozen=True)
class _Token(_NoState):
    """Non-callable marker for a global that may only appear as an argument."""

    name: str


_NDARRAY = _Token("numpy.ndarray")


class _Guarded(_NoState):
    """An allowed function as the pickle sees it: callable, but BUILD cannot alter it."""

    __slots__ = ("_func",)

    def __init__(self, func: Callable[..., Any]) -> None:
        self._func = func

    def __call__(self, *args: Any) -> Any:
        return self._func(*args)


class _DtypeSpec:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` plus its pickled state; it only records
    them."""

    __slots__ = ("args", "state")

    def __init__(self, *args: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.dtype:
        """Build the real dtype: bool, integer, float, complex, bytes or str only."""
        spec = self.args[0] if self.args else None
        state = self.state if isinstance(self.state, tuple) else ()
        if not isinstance(spec, str) or any(x is not None for x in state[2:5]):
            raise CheckpointFormatError(f"unsupported pickled numpy dtype {spec!r}")
        dtype = np.dtype(spec)
        if dtype.kind not in "biufcSU":
            raise CheckpointFormatError(f"unsupported pickled numpy dtype {spec!r}")
        order = state[1] if len(state) > 1 else "="
        return dtype.newbyteorder(order) if order in ("<", ">") else dtype


class PickledArray(np.ndarray):
    """A numpy array pickled inside the checkpoint (e.g. in mmengine's ``message_hub``).

    Its ``__setstate__`` accepts only a plain dtype (see ``_DtypeSpec``) and raw bytes.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CheckpointFormatError("bad pickled numpy array state")
        version, shape, spec, fortran, raw = state if len(state) == 5 else (1, *state)
        if not isinstance(spec, _DtypeSpec) or not isinstance(raw, bytes):
            raise CheckpointFormatError("only plain numeric/string numpy arrays are supported")
        shape = tuple(map(operator.index, shape))
        super().__setstate__((operator.index(version), shape, spec.resolve(), bool(fortran), raw))


def _np_reconstruct(subtype: Any, shape: Any, typecode: Any) -> PickledArray:
    """``numpy.core.multiarray._reconstruct`` stand-in: an empty array for BUILD to fill."""
    if subtype is not _NDARRAY:
        raise CheckpointFormatError(f"cannot reconstruct a numpy array of type {subtype!r}")
    return PickledArray((0,), np.uint8)


def _np_scalar(spec: Any, data: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar`` stand-in: one plain value from its raw bytes."""
    if not isinstance(spec, _DtypeSpec) or not isinstance(data, bytes):
        raise CheckpointFormatError("only plain numeric/string numpy scalars are supported")
    dtype = spec.resolve()
    if len(data) != dtype.itemsize:
        raise CheckpointFormatError(f"numpy scalar of {dtype} with {len(data)} bytes")
    return np.frombuffer(data, dtype, count=1)[0]


class _Inert:
    """Stand-in for a data-only class from the file: it stores what it is given and does nothing."""

    source = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            self.__dict__["_init_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        if type(state) is dict:
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        return f"<inert {self.source} {self.__dict__!r}>"


class HistoryBuffer(_Inert):
    """Inert stand-in for ``mmengine.logging.history_buffer.HistoryBuffer`` (state in
    ``__dict__``)."""

    source = "mmengine.logging.history_buffer.HistoryBuffer"


class MessageHub(_Inert):
    """Inert stand-in for ``mmengine.logging.message_hub.MessageHub`` (state in ``__dict__``)."""

    source = "mmengine.logging.message_hub.MessageHub"


class ConfigDict(dict):
    """Inert stand-in for ``mmengine.config.config.ConfigDict``: a plain dict of its items."""

    def __setstate__(self, state: Any) -> None:
        if type(state) is dict:
            self.update(state)
        else:
            self.__dict__["_state"] = state


class _Storage(_NoState):
    """One storage: ``numel`` elements of ``dtype`` as raw little/big-endian bytes.

    ``raw`` stays None for a legacy-format storage until the data section after the object
    pickle has been read; a legacy storage view (``root`` set) takes its bytes from its root.
    """

    def __init__(
        self,
        key: str,
        dtype: np.dtype,
        numel: int,
        root: _Storage | None = None,
        byte_offset: int = 0,
    ) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.root, self.byte_offset = root, byte_offset
        self._raw: memoryview | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def raw(self) -> memoryview | None:
        if self.root is not None:
            base = self.root.raw
            return None if base is None else base[self.byte_offset : self.byte_offset + self.nbytes]
        return self._raw

    @raw.setter
    def raw(self, value: memoryview) -> None:
        self._raw = value


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise CheckpointFormatError(
            f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin-1")


def _bytes() -> bytes:
    """``bytes()`` as protocol-2 pickles write ``b""`` (no size argument: no memory bombs)."""
    return b""


def _bytearray(data: bytes = b"") -> bytearray:
    if not isinstance(data, bytes):
        raise CheckpointFormatError("bytearray from something other than bytes")
    return bytearray(data)


def _size(value: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value)


_STATIC_ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytes": _bytes,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _encode,
    "torch.Size": _size,
    "numpy.ndarray": _NDARRAY,
    "numpy.dtype": _DtypeSpec,
    "numpy.core.multiarray._reconstruct": _np_reconstruct,
    "numpy._core.multiarray._reconstruct": _np_reconstruct,
    "numpy.core.multiarray.scalar": _np_scalar,
    "numpy._core.multiarray.scalar": _np_scalar,
    "mmengine.logging.history_buffer.HistoryBuffer": HistoryBuffer,
    "mmengine.logging.message_hub.MessageHub": MessageHub,
    "mmengine.config.config.ConfigDict": ConfigDict,
    **{f"torch.{name}": TorchDtype(name) for name in _TORCH_DTYPES},
    **{
        f"{mod}.{name}": _StorageType(name, dt)
        for name, dt in _STORAGE_DTYPES.items()
        for mod in ("torch", "torch.cuda")
    },
    "torch.storage.UntypedStorage": _StorageType("UntypedStorage", "uint8"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from the allow-list and turns tensors into numpy."""

    def __init__(
        self,
        stream: io.BytesIO,
        path: str,
        new_storage: Callable[[str, np.dtype, int], _Storage] | None = None,
        big_endian: bool = False,
    ) -> None:
        super().__init__(stream, encoding="utf-8")
        self.stream = stream
        self.path, self.big_endian, self._new_storage = path, big_endian, new_storage
        self.storages: dict[str, _Storage] = {}
        self.pending: list[tuple[np.ndarray, _Storage, int, tuple[int, ...], dict]] = []
        self._allowed = {
            **_STATIC_ALLOWED,
            "torch._utils._rebuild_tensor": self._rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor_v2,
            "torch._utils._rebuild_tensor_v3": self._rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": lambda data, *_: data,
            "torch._utils._rebuild_parameter_with_state": lambda data, *_: data,
        }

    def load(self) -> Any:
        """Check the pickle at the stream's position statically, then unpickle it."""
        start = self.stream.tell()
        _check_pickle(self.stream, self.path)
        self.stream.seek(start)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        mod, nm = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        mod = _compat_pickle.IMPORT_MAPPING.get(mod, mod)
        target = self._allowed.get(f"{mod}.{nm}")
        if target is None:
            raise UnsafeCheckpointError(
                f"refusing {self.path}: it references {module}.{name}, which could run arbitrary "
                "code; only tensors, storages and plain containers are allowed"
            )
        if isinstance(target, (types.FunctionType, types.MethodType)):
            return _Guarded(target)
        return target

    def persistent_load(self, pid: Any) -> _Storage:
        """Resolve ``('storage', storage_type, key, location, numel[, view_metadata])``."""
        if (
            self._new_storage is None
            or not isinstance(pid, tuple)
            or len(pid) not in (5, 6)
            or pid[0] not in ("storage", b"storage")
            or not isinstance(pid[1], _StorageType)
        ):
            raise CheckpointFormatError(f"{self.path}: unexpected persistent id {pid!r:.200}")
        dtype = _numpy_dtype(pid[1].dtype)
        if dtype is None:
            raise CheckpointFormatError(f"{self.path}: no numpy dtype for {pid[1].name}")
        key, numel = str(pid[2]), operator.index(pid[4])
        if numel < 0:
            raise CheckpointFormatError(f"{self.path}: storage {key} has negative size {numel}")
        storage = self.storages.get(key)
        if storage is None:  # as torch: the first reference of a key fixes its dtype
            storage = self.storages[key] = self._new_storage(key, dtype, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        view_key, offset, view_numel = (
            str(view[0]),
            operator.index(view[1]),
            operator.index(view[2]),
        )
        if view_key not in self.storages:
            if offset < 0 or view_numel < 0 or offset + view_numel > storage.numel:
                raise CheckpointFormatError(f"{self.path}: storage view {view_key} out of bounds")
            self.storages[view_key] = _Storage(
                view_key, storage.dtype, view_numel, storage, offset * storage.dtype.itemsize
            )
        return self.storages[view_key]

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        return self._tensor(storage, offset, size, stride, None, None)

    def _rebuild_tensor_v2(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = False,
        hooks: Any = None,
        metadata: Any = None,
    ) -> np.ndarray:
        return self._tensor(storage, offset, size, stride, None, metadata)

    def _rebuild_tensor_v3(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> np.ndarray:
        if not isinstance(dtype, TorchDtype) or dtype.numpy is None:
            raise CheckpointFormatError(f"{self.path}: unsupported tensor dtype {dtype!r}")
        return self._tensor(storage, offset, size, stride, dtype.numpy, metadata)

    def _tensor(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        dtype: np.dtype | None,
        metadata: Any,
    ) -> np.ndarray:
        """Make the array for a strided view of ``storage`` (offset/strides in elements)."""
        if not isinstance(storage, _Storage):
            raise CheckpointFormatError(f"{self.path}: tensor built from {type(storage).__name__}")
        dtype = storage.dtype if dtype is None else dtype
        offset = operator.index(offset)
        size, stride = tuple(map(operator.index, size)), tuple(map(operator.index, stride))
        if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
            raise CheckpointFormatError(
                f"{self.path}: bad tensor geometry {size}/{stride}/{offset}"
            )
        available = storage.nbytes // dtype.itemsize
        if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= available:
            raise CheckpointFormatError(
                f"{self.path}: tensor {size} stride {stride} offset {offset} overruns storage "
                f"{storage.key} of {available} elements"
            )
        out = np.zeros(size, dtype)
        self.pending.append(
            (out, storage, offset, stride, metadata if isinstance(metadata, dict) else {})
        )
        if storage.raw is not None:
            self.fill_pending()
        return out

    def fill_pending(self) -> None:
        """Copy storage bytes into every tensor whose storage bytes are known."""
        waiting = []
        for out, storage, offset, stride, metadata in self.pending:
            raw = storage.raw
            if raw is None:
                waiting.append((out, storage, offset, stride, metadata))
                continue
            if out.size:
                base = np.frombuffer(raw, out.dtype, count=len(raw) // out.dtype.itemsize)
                out[...] = as_strided(
                    base[offset:],
                    out.shape,
                    tuple(s * out.dtype.itemsize for s in stride),
                    writeable=False,
                )
                if self.big_endian:
                    out.byteswap(inplace=True)
                if metadata.get("neg"):
                    np.negative(out, out=out)
                if metadata.get("conj"):
                    np.conjugate(out, out=out)
        self.pending = waiting


def _read_zip(data: bytes, path: str) -> Any:
    """Load the zip layout: ``<root>/data.pkl`` plus one ``<root>/data/<key>`` record per
    storage."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        root = names[0].split("/", 1)[0] if names else ""
        if f"{root}/constants.pkl" in names:
            raise CheckpointFormatError(
                f"{path} is a TorchScript archive, not a torch.save checkpoint"
            )
        if f"{root}/data.pkl" not in names:
            raise CheckpointFormatError(f"{path}: zip archive without {root}/data.pkl")
        order = zf.read(f"{root}/byteorder") if f"{root}/byteorder" in names else b"little"
        if order not in (b"little", b"big"):
            raise CheckpointFormatError(f"{path}: unknown byteorder {order!r}")

        def new_storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
            storage, record = _Storage(key, dtype, numel), f"{root}/data/{key}"
            if record not in names:
                raise CheckpointFormatError(f"{path}: missing storage record {record}")
            raw = zf.read(record)
            if len(raw) < storage.nbytes:
                raise CheckpointFormatError(
                    f"{path}: storage {record} holds {len(raw)} bytes, {storage.nbytes} declared"
                )
            storage.raw = memoryview(raw)[: storage.nbytes]
            return storage

        pkl = io.BytesIO(zf.read(f"{root}/data.pkl"))
        return _SafeUnpickler(pkl, path, new_storage, order == b"big").load()


def _read_legacy(data: bytes, path: str) -> Any:
    """Load the legacy layout: header pickles, object pickle, key list, then the storages' bytes."""
    if len(data) > 262 and data[257:262] == b"ustar":
        raise CheckpointFormatError(f"{path}: tar checkpoints (torch < 0.4) are not supported")
    view, stream = memoryview(data), io.BytesIO(data)

    def load_plain() -> Any:
        return _SafeUnpickler(stream, path).load()

    if load_plain() != _LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path} is not a torch checkpoint (bad magic number)")
    if load_plain() != _LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: unsupported legacy protocol version")
    load_plain()  # sys_info; the data section is little-endian whatever it says

    def new_storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
        storage = _Storage(key, dtype, numel)
        if storage.nbytes > len(data):
            raise CheckpointFormatError(
                f"{path}: storage {key} declares more bytes than the file has"
            )
        return storage

    unpickler = _SafeUnpickler(stream, path, new_storage)
    result = unpickler.load()
    keys = load_plain()
    pos = stream.tell()
    if not isinstance(keys, list):
        raise CheckpointFormatError(f"{path}: storage key list missing")
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None or storage.root is not None:
            raise CheckpointFormatError(f"{path}: data section has unknown storage {key!r}")
        if pos + 8 > len(data):
            raise CheckpointFormatError(f"{path}: truncated before storage {key}")
        (count,) = struct.unpack_from("<q", data, pos)
        if count != storage.numel:
            raise CheckpointFormatError(
                f"{path}: storage {key} has {count} elements, {storage.numel} declared"
            )
        pos += 8
        if pos + storage.nbytes > len(data):
            raise CheckpointFormatError(
                f"{path}: storage {key} truncated: {storage.nbytes} bytes "
                f"declared, {len(data) - pos} left in the file"
            )
        storage.raw = view[pos : pos + storage.nbytes]
        pos += storage.nbytes
    unpickler.fill_pending()
    if unpickler.pending:
        raise CheckpointFormatError(f"{path}: storage {unpickler.pending[0][1].key} has no data")
    return result


def read_pth(path: str | os.PathLike) -> Any:
    """Load a ``torch.save``d object (zip or legacy layout; ``*.xz`` is decompressed first) as
    plain Python.

    Returns dicts (OrderedDict kept), lists, tuples, str, int, float, bool, None, and numpy
    arrays in place of tensors and parameters (same dtype, shape and values; C-contiguous
    copies, NCHW/OIHW as torch stored them). ``torch.dtype`` values become ``TorchDtype``,
    ``torch.Size`` a tuple, numpy arrays pickled in the file ``PickledArray`` (an ndarray),
    mmengine's data objects inert stand-ins holding their state.

    Raises FileNotFoundError if ``path`` does not exist, UnsafeCheckpointError if the file
    references anything off the allow-list, CheckpointFormatError if it is truncated or corrupt.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    try:
        if str(name).endswith(".xz"):
            data = lzma.decompress(data)
        if data[:4] == b"PK\x03\x04":
            return _read_zip(data, str(name))
        return _read_legacy(data, str(name))
    except (UnsafeCheckpointError, CheckpointFormatError) as exc:
        if name in str(exc):
            raise
        raise type(exc)(f"{name}: {exc}") from exc  # raised where the path is not known
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        lzma.LZMAError,
        zlib.error,
        EOFError,
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        RuntimeError,
        NotImplementedError,
        OSError,
    ) as exc:  # OSError: bz2's for a zip entry that claims bzip2 compression
        raise CheckpointFormatError(
            f"{name} is truncated, corrupt or not a torch checkpoint: {type(exc).__name__}: {exc}"
        ) from exc
    except MemoryError as exc:
        raise CheckpointFormatError(
            f"{name}: out of memory while reading it; a size field is probably corrupt"
        ) from exc
