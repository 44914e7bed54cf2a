"""Fresh models are initialised as mmdetection 3.3.0 initialises them, layer by layer.

``tests/data/init_reference/<model>.json`` (written by ``scripts/init_reference.py`` from
mmdetection's own ``init_weights()``) gives, per mmdetection parameter, the rule mmengine applied
(e.g. Xavier uniform, Kaiming normal fan_out, TruncNormal std 0.03, constant), torch's
fan_in / fan_out and mmdetection's sample statistics. For every tensor of our fresh model:

* the Flax variable exists with the same shape (OIHW ↔ HWIO), and every variable is covered;
* constants are exact (biases 0, BatchNorm 1 / 0, L2Norm 20, running mean 0 / var 1);
* random tensors match the rule's distribution: mean and std within ``Z`` standard errors for the
  tensor's size, values inside the support (uniform / truncation bounds), the uniform's support
  reached, and the excess kurtosis (uniform −1.2, normal 0) within ``Z`` standard errors;
* mmdetection's sample passes the same checks (so the rule is read right), and our std and mean
  agree with mmdetection's within ``Z`` combined standard errors.

With ``Z = 5`` a correct initialiser fails a check with probability < 1e-6 per check; the seeds
are fixed, so the outcome is deterministic. ``test_checks_reject_wrong_initialisers`` shows that
the same checks reject flax's default ``lecun_normal`` and fans taken from the wrong axes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO
from ssd_jax.config import load_config
from ssd_jax.detector import anchor_generator
from ssd_jax.errors import ConfigError
from ssd_jax.models import build_model
from ssd_jax.models.init import KAIMING, XAVIER_UNIFORM, conv_init, fans
from ssd_jax.models.ssd import part_conv_init
from ssd_jax.porting.convert import torch_to_flax_name
from ssd_jax.training.init import initial_variables

REF_DIR = pathlib.Path(__file__).parent / "data" / "init_reference"
MODELS = ("ssd300_coco", "ssd512_coco", "ssdlite_mobilenetv2_320_coco")
Z = 5.0  # standard errors allowed
P_FAIL = 1e-6  # for the uniform's support-reached check (one-sided tail probability)
MIN_N_KURTOSIS = 200  # the kurtosis' normal approximation needs a sample of this size
SEED = 0


def reference(name: str) -> dict:
    return json.loads((REF_DIR / f"{name}.json").read_text())


@functools.cache
def fresh_variables(name: str) -> dict[tuple[str, ...], np.ndarray]:
    """``{(collection, *path): array}`` of a freshly initialised model (config ``name``).

    One jit of ``model.init`` (the forward is dead code, so this compiles the random number
    generation only); a low XLA optimisation level halves that compile time.
    """
    config = load_config(REPO / "configs" / f"{name}.py")
    model = build_model(config.model, anchor_generator(config).num_anchors)
    x = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, 3), jnp.float32)
    key = jax.random.PRNGKey(SEED)
    start = time.perf_counter()
    compiled = (
        jax.jit(model.init)
        .lower(key, x)
        .compile({"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
    )
    variables = jax.device_get(compiled(key, jnp.zeros(x.shape, x.dtype)))
    print(f"{name}: init {time.perf_counter() - start:.1f} s")
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def flax_keys(ref: dict) -> dict[tuple[str, ...], dict]:
    """``{(collection, *Flax path): reference entry}`` by the checkpoint import's own mapping."""
    shapes = {e["key"]: np.broadcast_to(np.zeros((), bool), e["shape"]) for e in ref["params"]}
    out = {}
    for e in ref["params"]:
        collection, path = torch_to_flax_name(e["key"], shapes)
        out[(collection,) + path] = e
    return out


# ---- the distribution each rule names -------------------------------------------------------


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def distribution(rule: dict, fan_in: int | None, fan_out: int | None) -> dict:
    """Population mean, std, excess kurtosis (None: not checked) and support of a rule.

    Formulas as torch.nn.init documents them: Xavier std = gain·sqrt(2/(fan_in+fan_out)),
    uniform on ±sqrt(3)·std; Kaiming std = gain/sqrt(fan_mode), gain sqrt(2) for relu;
    trunc_normal's a, b are absolute cut-offs.
    """
    kind = rule["type"]
    if kind == "constant":
        return {"constant": float(rule["val"])}
    if kind == "xavier_uniform":
        bound = rule["gain"] * math.sqrt(6.0 / (fan_in + fan_out))
        return {
            "mean": 0.0,
            "std": bound / math.sqrt(3),
            "kurtosis": -1.2,
            "lo": -bound,
            "hi": bound,
            "uniform": True,
        }
    if kind == "kaiming_normal":
        gain = {"relu": math.sqrt(2.0)}[rule["nonlinearity"]]
        fan = fan_in if rule["mode"] == "fan_in" else fan_out
        return {
            "mean": 0.0,
            "std": gain / math.sqrt(fan),
            "kurtosis": 0.0,
            "lo": -math.inf,
            "hi": math.inf,
        }
    if kind == "normal":
        return {
            "mean": rule["mean"],
            "std": rule["std"],
            "kurtosis": 0.0,
            "lo": -math.inf,
            "hi": math.inf,
        }
    if kind == "trunc_normal":
        mu, sigma = rule["mean"], rule["std"]
        alpha, beta = (rule["a"] - mu) / sigma, (rule["b"] - mu) / sigma
        mass = _cdf(beta) - _cdf(alpha)
        shift = (_phi(alpha) - _phi(beta)) / mass
        var = sigma**2 * (1 + (alpha * _phi(alpha) - beta * _phi(beta)) / mass - shift**2)
        # Cut-offs beyond 6 std leave a normal; nearer ones change the kurtosis (not checked).
        kurtosis = 0.0 if min(-alpha, beta) > 6 else None
        return {
            "mean": mu + sigma * shift,
            "std": math.sqrt(var),
            "kurtosis": kurtosis,
            "lo": rule["a"],
            "hi": rule["b"],
        }
    raise ValueError(f"unknown rule {rule}")


def sample_stats(values: np.ndarray) -> dict:
    v = values.astype(np.float64).ravel()
    centred = v - v.mean()
    m2 = float(np.mean(centred**2))
    return {
        "mean": float(v.mean()),
        "std": math.sqrt(m2),
        "min": float(v.min()),
        "max": float(v.max()),
        "zero_fraction": float(np.mean(v == 0)),
        "kurtosis": float(np.mean(centred**4) / m2**2 - 3) if m2 > 0 else None,
    }


def std_error_of_std(dist: dict, n: int) -> float:
    """SE of the sample std, σ·sqrt((κ + 2) / 4n) for excess kurtosis κ (normal: σ/sqrt(2n))."""
    kurtosis = dist["kurtosis"] if dist["kurtosis"] is not None else 0.0
    return dist["std"] * math.sqrt((kurtosis + 2) / (4 * n))


def violations(stats: dict, n: int, dist: dict) -> list[str]:
    """What in a sample's statistics contradicts the distribution (empty: consistent)."""
    out = []
    if "constant" in dist:
        c = dist["constant"]
        if not (stats["min"] == c and stats["max"] == c):
            out.append(f"not the constant {c}: min {stats['min']}, max {stats['max']}")
        return out
    mu, sigma = dist["mean"], dist["std"]
    if abs(stats["mean"] - mu) > Z * sigma / math.sqrt(n):
        out.append(f"mean {stats['mean']:.3g} vs {mu:.3g} (SE {sigma / math.sqrt(n):.2g})")
    se = std_error_of_std(dist, n)
    if abs(stats["std"] - sigma) > Z * se:
        out.append(f"std {stats['std']:.5g} vs {sigma:.5g} (SE {se:.2g})")
    slack = 1e-6 * max(abs(dist["lo"]), abs(dist["hi"])) if math.isfinite(dist["lo"]) else 0.0
    if stats["min"] < dist["lo"] - slack or stats["max"] > dist["hi"] + slack:
        out.append(
            f"values [{stats['min']:.4g}, {stats['max']:.4g}] outside "
            f"[{dist['lo']:.4g}, {dist['hi']:.4g}]"
        )
    if dist.get("uniform"):
        # P(max < hi - t·width) = (1 - t)^n ≤ P_FAIL for t = ln(1/P_FAIL)/n.
        reach = math.log(1 / P_FAIL) / n * (dist["hi"] - dist["lo"])
        if stats["max"] < dist["hi"] - reach or stats["min"] > dist["lo"] + reach:
            out.append(
                f"values [{stats['min']:.4g}, {stats['max']:.4g}] do not fill "
                f"[{dist['lo']:.4g}, {dist['hi']:.4g}]"
            )
    if stats.get("kurtosis") is not None and dist["kurtosis"] is not None and n >= MIN_N_KURTOSIS:
        # SE of the sample excess kurtosis of a normal sample, sqrt(24/n); lighter-tailed
        # distributions (the uniform) have a smaller one, so this is conservative for them.
        if abs(stats["kurtosis"] - dist["kurtosis"]) > Z * math.sqrt(24 / n):
            out.append(f"excess kurtosis {stats['kurtosis']:.3f} vs {dist['kurtosis']}")
    return out


def disagreements(ours: dict, theirs: dict, n: int, dist: dict) -> list[str]:
    """Our sample against mmdetection's: two samples of one distribution."""
    if "constant" in dist:
        return []  # both checked exactly against the constant
    out = []
    se_mean = dist["std"] * math.sqrt(2 / n)
    if abs(ours["mean"] - theirs["mean"]) > Z * se_mean:
        out.append(f"mean {ours['mean']:.3g} vs mmdetection's {theirs['mean']:.3g}")
    se_std = std_error_of_std(dist, n) * math.sqrt(2)
    if abs(ours["std"] - theirs["std"]) > Z * se_std:
        out.append(f"std {ours['std']:.5g} vs mmdetection's {theirs['std']:.5g} (SE {se_std:.2g})")
    return out


# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_every_tensor_is_initialised_as_mmdetection_does(name):
    ref = reference(name)
    ours = fresh_variables(name)
    mapped = flax_keys(ref)
    assert sorted(mapped) == sorted(ours), (
        f"not in ours: {sorted(set(mapped) - set(ours))}; "
        f"not in mmdetection: {sorted(set(ours) - set(mapped))}"
    )
    problems = []
    for path, entry in mapped.items():
        shape = entry["shape"]  # torch's; OIHW → HWIO
        hwio = tuple(shape[2:] + shape[1::-1]) if len(shape) == 4 else tuple(shape)
        value = ours[path]
        assert value.shape == hwio, (entry["key"], value.shape, hwio)
        n = value.size
        dist = distribution(entry["rule"], entry["fan_in"], entry["fan_out"])
        stats = sample_stats(value)
        for who, found in (
            ("ours", violations(stats, n, dist)),
            ("mmdetection's", violations(entry, n, dist)),
            ("ours vs mmdetection", disagreements(stats, entry, n, dist)),
        ):
            problems += [f"{entry['key']} ({entry['rule']['type']}), {who}: {p}" for p in found]
    assert not problems, "\n".join(problems)


def test_the_references_hold_the_rules_mmdetection_documents():
    """What mmdetection 3.3.0 applies, per model and layer (read from its init_weights)."""

    def rules(name, where):
        return {
            json.dumps(e["rule"], sort_keys=True) for e in reference(name)["params"] if where(e)
        }

    kaiming = json.dumps(
        {"type": "kaiming_normal", "a": 0, "mode": "fan_out", "nonlinearity": "relu"},
        sort_keys=True,
    )
    xavier = json.dumps({"type": "xavier_uniform", "gain": 1}, sort_keys=True)
    zero = json.dumps({"type": "constant", "val": 0.0}, sort_keys=True)
    kernel = lambda e: len(e["shape"]) == 4  # noqa: E731
    for name in ("ssd300_coco", "ssd512_coco"):
        # SSDVGG without its pretrained weights: its own init_cfg, Kaiming (fan_out).
        assert rules(name, lambda e: kernel(e) and e["key"].startswith("backbone.")) == {kaiming}
        assert rules(name, lambda e: kernel(e) and not e["key"].startswith("backbone.")) == {xavier}
        assert rules(name, lambda e: e["key"].endswith(".bias")) == {zero}
        assert rules(name, lambda e: e["key"] == "neck.l2_norm.weight") == {
            json.dumps({"type": "constant", "val": 20.0})
        }
    lite = "ssdlite_mobilenetv2_320_coco"
    trunc = json.dumps(
        {"type": "trunc_normal", "mean": 0, "std": 0.03, "a": -2, "b": 2}, sort_keys=True
    )
    stem = ("backbone.conv1.", "backbone.conv2.")
    assert rules(lite, lambda e: kernel(e) and e["key"].startswith(stem)) == {kaiming}
    assert rules(
        lite, lambda e: kernel(e) and e["key"].startswith(("backbone.layer", "neck."))
    ) == {trunc}
    assert rules(lite, lambda e: kernel(e) and e["key"].startswith("bbox_head.")) == {
        json.dumps({"type": "normal", "mean": 0, "std": 0.001}, sort_keys=True)
    }
    assert rules(lite, lambda e: e["key"].endswith(".bias")) == {zero}
    assert rules(lite, lambda e: ".bn." in e["key"] and e["key"].endswith(".weight")) == {
        json.dumps({"type": "constant", "val": 1.0})
    }


@pytest.mark.parametrize("name", MODELS)
def test_fans_match_torch(name):
    """Our HWIO fans equal torch's on the OIHW weight, depthwise (C, 1, k, k) included."""
    for e in reference(name)["params"]:
        if len(e["shape"]) == 4:
            o, i, kh, kw = e["shape"]
            assert fans((kh, kw, i, o)) == (e["fan_in"], e["fan_out"]), e["key"]


def _lecun_normal(shape, rng) -> np.ndarray:
    """flax's default kernel init: a normal cut at ±2 std, rescaled to variance 1/fan_in."""
    z = rng.standard_normal(shape)
    while (outside := np.abs(z) > 2).any():
        z[outside] = rng.standard_normal(int(outside.sum()))
    return z * math.sqrt(1.0 / fans(shape)[0]) / 0.87962566103423978  # std of N(0,1) cut at ±2


def _rule_with_torch_axes_on_hwio(entry: dict, shape, rng) -> np.ndarray:
    """The right rule, but fans computed as if the HWIO kernel were OIHW."""
    wrong_in, wrong_out = shape[1] * shape[2] * shape[3], shape[0] * shape[2] * shape[3]
    dist = distribution(entry["rule"], wrong_in, wrong_out)
    if dist.get("uniform"):
        return rng.uniform(dist["lo"], dist["hi"], shape)
    return rng.normal(dist["mean"], dist["std"], shape)


@pytest.mark.parametrize("name", ["ssd300_coco", "ssdlite_mobilenetv2_320_coco"])
def test_checks_reject_wrong_initialisers(name):
    """The checks above fail for flax's lecun_normal on every conv kernel, and for fans from the
    wrong axes on every kernel whose rule uses fans (where those give another std); a sample
    of the right distribution passes them."""
    rng = np.random.default_rng(0)
    for e in reference(name)["params"]:
        if len(e["shape"]) != 4:
            continue
        o, i, kh, kw = e["shape"]
        shape = (kh, kw, i, o)
        dist = distribution(e["rule"], e["fan_in"], e["fan_out"])
        n = math.prod(shape)
        if n > 2**20:
            continue  # time: a larger sample only makes the checks stricter
        lecun = _lecun_normal(shape, rng)
        assert violations(sample_stats(lecun), n, dist), f"{e['key']}: lecun_normal passes"
        wrong_dist = distribution(
            e["rule"], shape[1] * shape[2] * shape[3], shape[0] * shape[2] * shape[3]
        )
        if abs(wrong_dist["std"] / dist["std"] - 1) > 0.05:  # e.g. not (3, 3, 3, 64): kh == I
            wrong = _rule_with_torch_axes_on_hwio(e, shape, rng)
            assert violations(sample_stats(wrong), n, dist), f"{e['key']}: wrong fans pass"
        # and a right sample passes (the checks are not merely strict)
        right = (
            rng.uniform(dist["lo"], dist["hi"], shape)
            if dist.get("uniform")
            else rng.normal(dist["mean"], dist["std"], shape)
        )
        assert not violations(sample_stats(right), n, dist), e["key"]


def test_conv_init_specs():
    """Config ``conv_init`` entries use mmengine's names and defaults; absent means the part's
    mmdetection default."""
    key = jax.random.PRNGKey(1)
    shape = (3, 3, 64, 128)  # fan_in 576, fan_out 1152
    k = np.asarray(conv_init({"type": "Kaiming"}).kernel(key, shape, jnp.float32))
    assert abs(k.std() / math.sqrt(2 / 1152) - 1) < Z * math.sqrt(1 / (2 * k.size))
    k = np.asarray(conv_init({"type": "Kaiming", "mode": "fan_in"}).kernel(key, shape, jnp.float32))
    assert abs(k.std() / math.sqrt(2 / 576) - 1) < Z * math.sqrt(1 / (2 * k.size))
    k = np.asarray(
        conv_init({"type": "TruncNormal", "std": 1.0, "a": -0.5, "b": 0.5}).kernel(
            key, shape, jnp.float32
        )
    )
    assert k.min() >= -0.5 and k.max() <= 0.5 and k.max() > 0.49  # absolute cut-offs
    b = conv_init({"type": "Normal", "std": 0.01, "bias": 0.5}).bias(key, (4,), jnp.float32)
    np.testing.assert_array_equal(np.asarray(b), 0.5)
    with jax.enable_x64(True):  # fp64 precision: float64 parameters
        for spec in (
            {"type": "Xavier", "distribution": "uniform"},
            {"type": "Kaiming"},
            {"type": "TruncNormal", "std": 0.03},
        ):
            init = conv_init(spec)
            assert init.kernel(key, shape, jnp.float64).dtype == jnp.float64, spec
            assert init.bias(key, (4,), jnp.float64).dtype == jnp.float64, spec
    for bad in (
        {"type": "Pretrained"},
        {"type": "Kaiming", "layer": "BatchNorm2d"},
        {"type": "Xavier", "distribution": "cauchy"},
    ):
        with pytest.raises(ValueError):
            conv_init(bad)
    c = load_config(REPO / "configs" / "ssd300_coco.py")
    del c.model.neck.conv_init
    assert part_conv_init(c.model.neck, XAVIER_UNIFORM) is XAVIER_UNIFORM
    assert part_conv_init(c.model.backbone, KAIMING) is not KAIMING  # from the config's spec


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", ["ssd300_coco", "ssd512_coco"])
def test_vgg_without_pretrained_backbone_is_refused_naming_the_file(name):
    """SSD300/512 with neither train.pretrained_backbone nor train.load_from: a one-line
    ConfigError naming mmdetection's file and the setting that trains from scratch."""
    config = load_config(REPO / "configs" / f"{name}.py")
    variables = {"params": {"x": np.zeros(1)}, "batch_stats": {}}
    with pytest.raises(ConfigError) as refused:
        initial_variables(config, lambda: variables)
    message = str(refused.value)
    assert "\n" not in message
    assert "vgg16_caffe-292e1171.pth" in message
    assert "--config.train.pretrained_backbone=none" in message


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("ssd300_coco", ["train.pretrained_backbone=none"]),
        ("ssd512_coco", ["train.pretrained_backbone=none"]),
        ("ssdlite_mobilenetv2_320_coco", []),  # trained from scratch in mmdetection too
    ],
)
def test_scratch_on_purpose_keeps_the_fresh_init_silently(name, overrides):
    """``pretrained_backbone=none`` (and SSDLite, which has no pretrained backbone) start from
    the model's own init, which the tests above hold to mmdetection's: nothing loaded, no
    warning."""
    config = load_config(REPO / "configs" / f"{name}.py", overrides)
    records = _Records()
    logger = logging.getLogger("ssd_jax.training.init")
    logger.addHandler(records)
    try:
        variables = {"params": {"x": np.zeros(1)}, "batch_stats": {}}
        assert initial_variables(config, lambda: variables) is variables
    finally:
        logger.removeHandler(records)
    assert records.messages == []
