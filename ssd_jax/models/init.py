"""Parameter initialisers with mmdetection 3.3.0's (mmengine's) semantics, for HWIO kernels.

A conv's initialisation is given as mmengine spells an ``init_cfg`` entry for ``Conv2d`` layers,
e.g. ``dict(type='Xavier', distribution='uniform')``, ``dict(type='TruncNormal', std=0.03)``:
same type names, same arguments, same defaults (mmengine ``model/weight_init.py``), and the bias
set to the constant ``bias`` (default 0) as every mmengine initialiser does.

Fans follow torch's ``_calculate_fan_in_and_fan_out`` on an OIHW weight of shape
(O, I/groups, kh, kw): fan_in = I/groups·kh·kw, fan_out = O·kh·kw. Our kernels are HWIO
(kh, kw, I/groups, O) — a depthwise kernel is (k, k, 1, C) — so the same numbers are
``shape[-2]·prod(shape[:-2])`` and ``shape[-1]·prod(shape[:-2])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]


class ConvInit(NamedTuple):
    """The initialisers of a conv's ``kernel`` (HWIO) and ``bias``."""

    kernel: Initializer
    bias: Initializer


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of an HWIO kernel (or an (in, out) matrix), as torch counts them."""
    if len(shape) < 2:
        raise ValueError(f"fans need a kernel of at least 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch.nn.init.calculate_gain for the nonlinearities mmdetection's inits name."""
    if nonlinearity in ("linear", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "tanh":
        return 5.0 / 3
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def constant(val: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, val, dtype)

    return init


def _uniform(key, shape, dtype, bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def normal(mean: float = 0.0, std: float = 1.0) -> Initializer:
    """N(mean, std²) (mmengine ``Normal``)."""

    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def trunc_normal(
    mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
) -> Initializer:
    """N(mean, std²) restricted to [a, b] (mmengine ``TruncNormal``).

    ``a`` and ``b`` are absolute cut-offs, as in torch / mmengine ``trunc_normal_``, not
    multiples of ``std``: SSDLite's std 0.03 with the default ±2 cuts at ±67 std (no truncation
    in practice).
    """

    def init(key, shape, dtype=jnp.float32):
        z = jax.random.truncated_normal(key, (a - mean) / std, (b - mean) / std, shape, dtype)
        return jnp.clip(mean + std * z, a, b)

    return init


def xavier(gain: float = 1.0, distribution: str = "normal") -> Initializer:
    """Glorot: std = gain·sqrt(2 / (fan_in + fan_out)); uniform on ±sqrt(3)·std (mmengine
    ``Xavier``, whose default distribution is 'normal')."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = fans(shape)
        std = gain * math.sqrt(2.0 / (fan_in + fan_out))
        if distribution == "uniform":
            return _uniform(key, shape, dtype, math.sqrt(3.0) * std)
        return std * jax.random.normal(key, shape, dtype)

    _check_distribution(distribution)
    return init


def kaiming(
    a: float = 0.0, mode: str = "fan_out", nonlinearity: str = "relu", distribution: str = "normal"
) -> Initializer:
    """He: std = gain / sqrt(fan); uniform on ±sqrt(3)·std (mmengine ``Kaiming``: fan_out,
    relu, normal by default)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r}: expected 'fan_in' or 'fan_out'")
    _check_distribution(distribution)
    gain = calculate_gain(nonlinearity, a)

    def init(key, shape, dtype=jnp.float32):
        fan = fans(shape)[0 if mode == "fan_in" else 1]
        std = gain / math.sqrt(fan)
        if distribution == "uniform":
            return _uniform(key, shape, dtype, math.sqrt(3.0) * std)
        return std * jax.random.normal(key, shape, dtype)

    return init


def _check_distribution(distribution: str) -> None:
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution {distribution!r}: expected 'normal' or 'uniform'")


_KERNEL_INITS: dict[str, Callable[..., Initializer]] = {
    "Xavier": xavier,
    "Kaiming": kaiming,
    "Normal": normal,
    "TruncNormal": trunc_normal,
    "Constant": constant,
}


def conv_init(spec: Mapping[str, Any]) -> ConvInit:
    """The conv initialisers of an mmengine-style spec, e.g. ``{'type': 'Normal', 'std': 0.001}``.

    ``bias`` (default 0) is the bias's constant; ``layer`` (mmengine's layer filter) may be given
    as ``'Conv2d'`` only: these initialisers are for convolutions.
    """
    args = dict(spec)
    kind = args.pop("type", None)
    if kind not in _KERNEL_INITS:
        raise ValueError(f"conv init type {kind!r}: expected one of {sorted(_KERNEL_INITS)}")
    bias = float(args.pop("bias", 0.0))
    if args.pop("layer", "Conv2d") != "Conv2d":
        raise ValueError(f"conv init {dict(spec)}: only layer='Conv2d' is supported")
    return ConvInit(_KERNEL_INITS[kind](**args), constant(bias))


# mmengine's defaults (``Kaiming``: a=0, fan_out, relu, normal; bias 0). This is also what mmcv's
# ``ConvModule`` applies to its conv when built and in its own ``init_weights``.
KAIMING = conv_init({"type": "Kaiming"})
# SSDNeck's and SSDHead's default init_cfg: Xavier, distribution 'uniform', bias 0.
XAVIER_UNIFORM = conv_init({"type": "Xavier", "distribution": "uniform"})
