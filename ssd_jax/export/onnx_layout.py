"""One NCHW layout through an exported ONNX graph: the layout changes that jax2onnx writes around
every convolution are moved until they meet and cancel.

jax2onnx writes each NHWC convolution of the JAX model as ``Transpose(NHWC→NCHW)``, ``Conv``,
``Transpose(NCHW→NHWC)``, with the kernel's HWIO→OIHW ``Transpose`` as a node and the bias as an
``Add`` after it. ONNX Runtime's own optimizer removes these; OpenVINO's does not, and ran our
SSDLite graph at 0.37× (f32) and 0.20× (bf16) of mmdetection's ``torch.onnx`` graph, which is
NCHW throughout. ``to_nchw`` rewrites the graph in place:

1. a ``Transpose`` of a constant becomes the transposed constant;
2. every NCHW→NHWC ``Transpose`` sinks below the layout-free ops that read it (elementwise ops,
   ``Pad``, reductions with ``keepdims``), their constants permuted to match;
3. every NHWC→NCHW ``Transpose`` rises above the elementwise ops that feed it only (the input's
   ``Cast``/``Sub``/``Div`` normalisation), so that it transposes the uint8 image;
4. two ``Transpose`` nodes in a row that undo each other are removed;
5. a per-channel ``Add`` right after a ``Conv`` becomes the ``Conv``'s bias, and a
   per-channel ``Div`` or ``Mul`` right before one (the input's ``/ std``) part of its kernel;
6. a ``-inf`` ``Pad`` of the spatial dims before a ``MaxPool`` (VGG's ceil-mode pools) becomes
   the pool's own padding, ``Max(x, 0)`` becomes ``Relu``, and a ``Reshape`` whose target
   shape is computed from its input's batch size (``Shape``, ``Gather``...) gets the constant
   shape ``[0, ...]`` (0: keep that dimension), so the graph computes no shapes.

The tensors named in the graph keep their values and layouts (new tensors get new names), so
the rewrite changes no output beyond float32 rounding (the scaled kernel): it only removes work.
What stays are the layout changes the outputs need (the head's NCHW maps → (B, A, C+1)) and
those around ops none of the rules cross.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

#: Ops that act on each element (the non-data inputs of ``Clip`` are scalars): a layout change
#: of their inputs commutes with them.
ELEMENTWISE = frozenset(
    {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Relu", "Clip", "Cast", "Sigmoid", "Sqrt",
     "Exp", "Neg", "Abs", "Reciprocal", "LeakyRelu", "HardSigmoid", "HardSwish", "Identity"}
)  # fmt: skip
REDUCTIONS = frozenset({"ReduceL2", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"})
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


class _Graph:
    """The nodes of an ONNX graph, with its constants, producers and consumers (recomputed
    after each rewrite: the graphs here have hundreds of nodes)."""

    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.nodes = list(self.graph.node)
        self.constants = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and len(node.attribute) == 1:
                if node.attribute[0].name == "value":
                    self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in self.graph.output}
        self.ranks = {  # of the tensors whose shapes jax2onnx recorded
            v.name: len(v.type.tensor_type.shape.dim)
            for v in itertools.chain(self.graph.input, self.graph.value_info)
            if v.type.tensor_type.HasField("shape")
        }
        self.new_initializers: list[Any] = []
        self._names = (f"nchw_{i}" for i in itertools.count())
        self.index()

    def index(self) -> None:
        """Drop the nodes that nothing reads any more (repeatedly: a chain of dead nodes), then
        map each tensor to its producer and readers."""
        while True:
            used = {name for n in self.nodes for name in n.input} | self.outputs
            live = [n for n in self.nodes if any(o in used for o in n.output)]
            if len(live) == len(self.nodes):
                break
            self.nodes = live
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)

    def fresh(self) -> str:
        name = next(self._names)
        while name in self.producer or name in self.constants:
            name = next(self._names)
        return name

    def constant(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh()
        self.constants[name] = value
        self.new_initializers.append(numpy_helper.from_array(value, name))
        return name

    def transpose_perm(self, name: str) -> tuple[int, ...] | None:
        node = self.producer.get(name)
        if node is None or node.op_type != "Transpose":
            return None
        return tuple(next(a.ints for a in node.attribute if a.name == "perm"))

    def transpose(self, x: str, perm: tuple[int, ...], out: str) -> Any:
        from onnx import helper

        return helper.make_node("Transpose", [x], [out], perm=list(perm), name=f"{out}_transpose")

    def position(self, node: Any) -> int:
        return next(
            i for i, n in enumerate(self.nodes) if n is node
        )  # protobufs: == compares values

    def insert(self, new: list[Any], before: Any | None = None, after: Any | None = None) -> None:
        i = self.position(before) if before is not None else self.position(after) + 1
        self.nodes[i:i] = new

    def remove(self, node: Any) -> None:
        del self.nodes[self.position(node)]

    def permuted_constant(self, name: str, perm: tuple[int, ...], rank: int) -> str:
        """``name``'s value broadcast to ``rank`` dims and transposed by ``perm``; scalars as
        they are."""
        value = self.constants[name]
        if value.size == 1:
            return name
        value = value.reshape((1,) * (rank - value.ndim) + value.shape)
        return self.constant(np.ascontiguousarray(value.transpose(perm)))

    def write_back(self) -> None:
        used = {name for n in self.nodes for name in n.input} | self.outputs
        del self.graph.node[:]
        self.graph.node.extend(_topological(self.nodes, self.graph))
        initializers = [i for i in self.graph.initializer if i.name in used]
        initializers += [i for i in self.new_initializers if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(initializers)
        live = {o for n in self.nodes for o in n.output} | used
        info = [v for v in self.graph.value_info if v.name in live]
        del self.graph.value_info[:]
        self.graph.value_info.extend(info)


def _topological(nodes: list[Any], graph: Any) -> list[Any]:
    """``nodes`` in an order where each comes after the producers of its inputs (stable)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ready |= {i.name for i in graph.sparse_initializer}
    out: list[Any] = []
    pending = list(nodes)
    produced = {o for n in nodes for o in n.output}
    while pending:
        rest = []
        for n in pending:
            if all(i in ready or i not in produced for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"onnx_layout: a cycle through {[n.name for n in rest][:5]}")
        pending = rest
    return out


def _fold_constant_transposes(g: _Graph) -> bool:
    for node in g.nodes:
        if node.op_type == "Transpose" and node.input[0] in g.constants:
            perm = g.transpose_perm(node.output[0])
            value = np.ascontiguousarray(g.constants[node.input[0]].transpose(perm))
            name = g.constant(value)
            for user in g.consumers.get(node.output[0], []):
                user.input[:] = [name if i == node.output[0] else i for i in user.input]
            if node.output[0] in g.outputs:
                continue
            g.remove(node)
            g.index()
            return True
    return False


def _data_inputs(g: _Graph, node: Any) -> list[int]:
    """Positions of ``node``'s inputs that are not constants."""
    return [k for k, name in enumerate(node.input) if name and name not in g.constants]


def _sink(g: _Graph) -> bool:
    """Move one NCHW→NHWC Transpose below a layout-free op that reads it."""
    for node in g.nodes:
        data = _data_inputs(g, node)
        if not data or node.op_type not in ELEMENTWISE | REDUCTIONS | {"Pad"}:
            continue
        if any(g.transpose_perm(node.input[k]) != TO_NHWC for k in data):
            continue
        if node.op_type != "Pad" and node.op_type not in ELEMENTWISE and not _reduction_ok(g, node):
            continue
        if node.op_type == "Pad" and (data != [0] or len(node.input) > 3):
            continue
        inv = _inverse(TO_NHWC)
        inputs = list(node.input)
        for k, name in enumerate(inputs):
            if k in data:
                inputs[k] = g.producer[name].input[0]
            elif name and node.op_type in ELEMENTWISE:
                inputs[k] = g.permuted_constant(name, inv, 4)
        if node.op_type == "Pad":  # pads [x1_begin, ..., x4_begin, x1_end, ...] of the NHWC data
            pads = g.constants[node.input[1]].reshape(2, 4)
            inputs[1] = g.constant(np.ascontiguousarray(pads[:, inv].reshape(-1)))
        if node.op_type in REDUCTIONS:
            axes = g.constants[node.input[1]]
            nchw_axes = np.asarray([TO_NHWC[int(a) % 4] for a in axes], axes.dtype)
            inputs[1] = g.constant(nchw_axes)
        new_out = g.fresh()
        old_out = node.output[0]
        node.input[:] = inputs
        node.output[0] = new_out
        g.insert([g.transpose(new_out, TO_NHWC, old_out)], after=node)
        g.index()
        return True
    return False


def _reduction_ok(g: _Graph, node: Any) -> bool:
    keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    return keepdims == 1 and len(node.input) == 2 and node.input[1] in g.constants


def _hoist(g: _Graph) -> bool:
    """Move one NHWC→NCHW Transpose above an elementwise op whose only reader it is."""
    for node in g.nodes:
        if node.op_type != "Transpose" or g.transpose_perm(node.output[0]) != TO_NCHW:
            continue
        source = g.producer.get(node.input[0])
        if (
            source is None
            or source.op_type not in ELEMENTWISE
            or len(source.output) != 1
            or source.output[0] in g.outputs
            or len(g.consumers[source.output[0]]) != 1
        ):
            continue
        data = _data_inputs(g, source)
        if not data or any(g.ranks.get(source.input[k]) != 4 for k in data):
            continue
        new = []
        inputs = list(source.input)
        for k, name in enumerate(inputs):
            if k in data:
                inputs[k] = g.fresh()
                new.append(g.transpose(name, TO_NCHW, inputs[k]))
            elif name:
                inputs[k] = g.permuted_constant(name, TO_NCHW, 4)
        source.input[:] = inputs
        source.output[0] = node.output[0]
        g.remove(node)
        g.insert(new, before=source)
        g.index()
        return True
    return False


def _cancel(g: _Graph) -> bool:
    """Remove one Transpose whose input is a Transpose it undoes."""
    for node in g.nodes:
        perm = g.transpose_perm(node.output[0]) if node.op_type == "Transpose" else None
        first = g.transpose_perm(node.input[0]) if perm else None
        if first is None or node.output[0] in g.outputs:
            continue
        if any(first[perm[i]] != i for i in range(len(perm))):
            continue
        source = g.producer[node.input[0]].input[0]
        for user in g.consumers.get(node.output[0], []):
            user.input[:] = [source if i == node.output[0] else i for i in user.input]
        g.remove(node)
        g.index()
        return True
    return False


def _bias_into_conv(g: _Graph) -> bool:
    """Make one per-channel ``Add`` of a constant, the only reader of a bias-free ``Conv``,
    that ``Conv``'s bias."""
    for node in g.nodes:
        if node.op_type != "Conv" or len(node.input) != 2 or node.output[0] in g.outputs:
            continue
        users = g.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        other = [i for i in add.input if i != node.output[0]]
        if len(other) != 1 or other[0] not in g.constants:
            continue
        bias = g.constants[other[0]]
        channels = g.constants.get(node.input[1])
        if channels is None or bias.ndim > 4:
            continue
        c = channels.shape[0]
        shape = (1,) * (4 - bias.ndim) + bias.shape
        if shape != (1, c, 1, 1) or bias.dtype != channels.dtype:
            continue
        node.input.append(g.constant(bias.reshape(c)))
        node.output[0] = add.output[0]
        g.remove(add)
        g.index()
        return True
    return False


def _scale_into_conv(g: _Graph) -> bool:
    """Make one ``Div`` or ``Mul`` by a per-channel constant, whose only reader is an ungrouped
    ``Conv`` with a constant kernel, part of that kernel (zero padding stays zero)."""
    for node in g.nodes:
        if node.op_type not in ("Div", "Mul") or node.output[0] in g.outputs:
            continue
        users = g.consumers.get(node.output[0], [])
        data = _data_inputs(g, node)
        if len(users) != 1 or users[0].op_type != "Conv" or len(data) != 1:
            continue
        conv = users[0]
        kernel = g.constants.get(conv.input[1]) if conv.input[0] == node.output[0] else None
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        scale = g.constants[node.input[1 - data[0]]]
        if kernel is None or groups != 1 or (node.op_type == "Div" and data[0] != 0):
            continue
        c = kernel.shape[1]
        if scale.ndim > 4 or (1,) * (4 - scale.ndim) + scale.shape not in ((1, c, 1, 1), (1,) * 4):
            continue
        factor = scale.astype(np.float64).reshape(1, -1, 1, 1)
        factor = 1.0 / factor if node.op_type == "Div" else factor
        conv.input[1] = g.constant((kernel.astype(np.float64) * factor).astype(kernel.dtype))
        conv.input[0] = node.input[data[0]]
        g.remove(node)
        g.index()
        return True
    return False


def _pad_into_pool(g: _Graph) -> bool:
    """Make one ``-inf`` ``Pad`` of the H, W dims of an NCHW tensor, read only by a
    ``MaxPool`` without padding of its own, that pool's ``pads`` (a pool's padding is ``-inf``)."""
    for node in g.nodes:
        if node.op_type != "Pad" or node.output[0] in g.outputs:
            continue
        users = g.consumers.get(node.output[0], [])
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if len(users) != 1 or users[0].op_type != "MaxPool" or mode != b"constant":
            continue
        if len(node.input) != 3 or any(i not in g.constants for i in node.input[1:]):
            continue
        pads, value = g.constants[node.input[1]], g.constants[node.input[2]]
        pool = users[0]
        attrs = {a.name: a for a in pool.attribute}
        own = list(attrs["pads"].ints) if "pads" in attrs else []
        auto = attrs["auto_pad"].s if "auto_pad" in attrs else b"NOTSET"
        if pads.shape != (8,) or value.size != 1 or not np.isneginf(value).all():
            continue
        if (
            pads[[0, 1, 4, 5]].any()
            or (pads < 0).any()
            or any(own)
            or auto not in (b"VALID", b"NOTSET")
        ):
            continue
        kernel = list(attrs["kernel_shape"].ints)
        if any(p >= k for p, k in zip(pads[[2, 3, 6, 7]], kernel * 2, strict=True)):
            continue  # ONNX Runtime wants each pad below the window
        from onnx import helper

        keep = [a for a in pool.attribute if a.name not in ("pads", "auto_pad")]
        del pool.attribute[:]
        pool.attribute.extend(keep)
        pool.attribute.append(helper.make_attribute("pads", [int(p) for p in pads[[2, 3, 6, 7]]]))
        pool.input[0] = node.input[0]
        g.remove(node)
        g.index()
        return True
    return False


def _max_as_relu(g: _Graph) -> bool:
    """Write one ``Max(x, 0)`` (a float scalar zero) as ``Relu(x)``."""
    for node in g.nodes:
        if node.op_type != "Max" or len(node.input) != 2:
            continue
        zero = [k for k, name in enumerate(node.input) if name in g.constants]
        if len(zero) != 1:
            continue
        value = g.constants[node.input[zero[0]]]
        x = node.input[1 - zero[0]]
        if value.size != 1 or value.ndim > g.ranks.get(x, 0) or value.reshape(()) != 0:
            continue
        if not np.issubdtype(value.dtype, np.floating):  # ONNX Runtime's Relu is float only
            continue
        node.op_type = "Relu"
        node.input[:] = [x]
        g.index()
        return True
    return False


def _batch_size_of(g: _Graph, name: str) -> str | None:
    """The tensor whose dim 0 ``name`` holds (as a 1-element value), if it is computed by
    ``Shape``, ``Gather(0)`` and ``Squeeze``/``Unsqueeze`` alone; else None."""
    node = g.producer.get(name)
    while node is not None and node.op_type in ("Squeeze", "Unsqueeze"):
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Gather" or node.input[1] not in g.constants:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    index = g.constants[node.input[1]]
    shape = g.producer.get(node.input[0])
    if axis != 0 or index.size != 1 or int(index.reshape(())) != 0:
        return None
    if shape is None or shape.op_type != "Shape" or len(shape.attribute):
        return None
    return shape.input[0]


def _constant_reshape(g: _Graph) -> bool:
    """Give one ``Reshape``, whose target is ``Concat(batch size of its input, constants)``,
    the constant target ``[0, constants]``."""
    for node in g.nodes:
        if node.op_type != "Reshape" or node.input[1] in g.constants:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        concat = g.producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat":
            continue
        first, *rest = concat.input
        if _batch_size_of(g, first) != node.input[0] or any(r not in g.constants for r in rest):
            continue
        values = [g.constants[r].reshape(-1) for r in rest]
        if any(v.size != 1 for v in values):
            continue
        node.input[1] = g.constant(np.asarray([0, *(int(v[0]) for v in values)], np.int64))
        g.index()
        return True
    return False


def to_nchw(model: Any) -> dict[str, int]:
    """Rewrite ``model`` (an ``onnx.ModelProto`` from jax2onnx) in place as described in the
    module docstring; returns how many times each rule applied."""
    g = _Graph(model)
    counts = dict.fromkeys(
        ("folded", "sunk", "hoisted", "cancelled", "bias", "scale", "pool", "relu", "reshape"), 0
    )
    while _fold_constant_transposes(g):
        counts["folded"] += 1
    rules = (("cancelled", _cancel), ("sunk", _sink), ("hoisted", _hoist))
    changed = True
    while changed:
        changed = False
        for key, rule in rules:
            while rule(g):
                counts[key] += 1
                changed = True
    while _bias_into_conv(g):
        counts["bias"] += 1
    while _scale_into_conv(g):
        counts["scale"] += 1
    for key, rule in (
        ("pool", _pad_into_pool),
        ("relu", _max_as_relu),
        ("reshape", _constant_reshape),
    ):
        while rule(g):
            counts[key] += 1
    g.write_back()
    return counts
