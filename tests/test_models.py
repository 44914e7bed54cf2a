"""Configs, SSD512 (no fixture: golden values), ceil-mode pooling, NMS and box-coding properties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from ssd_jax import box_coder
from ssd_jax.box_ops import pairwise_iou
from ssd_jax.config import load_config
from ssd_jax.models import build_model
from ssd_jax.models.assembly import anchor_generator, featmap_sizes
from ssd_jax.models.layers import DepthwiseConv, PointwiseConv, conv, max_pool_ceil
from ssd_jax.postprocess import batched_nms


def test_ssd512_anchors_and_feature_maps():
    config = load_config(REPO / "configs" / "ssd512_coco.py")
    gen = anchor_generator(config)
    model = build_model(config.model, gen.num_anchors)
    sizes = featmap_sizes(model, 512)
    assert sizes == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors = gen.grid_anchors(sizes)
    assert sum(len(a) for a in anchors) == 24564
    # mmdetection SSD512: min sizes (20, 51, 133, 215, 296, 378, 460), max (51, ..., 542).
    first = anchors[0][:4]  # cell (0, 0), stride 8, centre 4
    np.testing.assert_allclose(first[0], [4 - 10, 4 - 10, 4 + 10, 4 + 10], atol=1e-4)
    big = np.sqrt(20 * 51) / 2
    np.testing.assert_allclose(first[1], [4 - big, 4 - big, 4 + big, 4 + big], atol=1e-4)
    w, h = 20 * np.sqrt(2), 20 / np.sqrt(2)  # ratio r = 1/2: h = s·sqrt(r), w = s / sqrt(r)
    np.testing.assert_allclose(first[2], [4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], atol=1e-4)
    last = anchors[6]  # one cell of stride 512, centre 256; sizes 460 and sqrt(460·542)
    np.testing.assert_allclose(last[0], [256 - 230, 256 - 230, 256 + 230, 256 + 230], atol=1e-4)


def test_ceil_mode_pool_sizes():
    x = jnp.arange(75 * 75, dtype=jnp.float32).reshape(1, 75, 75, 1)
    y = max_pool_ceil(x, 2, 2)
    assert y.shape == (1, 38, 38, 1)
    assert float(y[0, 37, 37, 0]) == float(x[0, 74, 74, 0])  # the last window has one pixel


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 38, 38, 5), (2, 4, 4, 2)])
def test_ceil_mode_pool_gradient_goes_to_the_first_maximum_as_torch(shape):
    """max_pool_ceil's own backward (2×2 stride 2) against torch's max_pool2d(ceil_mode=True),
    float64, on small integers: many tied maxima, and odd sizes (windows in the padding)."""
    from conftest import require

    torch = require("torch")
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 3, shape).astype(np.float64)
    with jax.enable_x64():
        y, vjp = jax.vjp(lambda v: max_pool_ceil(v, 2, 2), jnp.asarray(x))
        g = rng.standard_normal(y.shape)
        (dx,) = vjp(jnp.asarray(g))
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 2, 2, ceil_mode=True)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 1))
    assert np.count_nonzero(np.asarray(dx)) == g.size  # one position per window, none lost


def test_config_overrides_and_typos():
    c = load_config(
        REPO / "configs" / "ssd300_coco.py", ["--config.train.batch_size=32", "test.score_thr=0.05"]
    )
    assert c.train.batch_size == 32 and c.test.score_thr == 0.05
    with pytest.raises(KeyError, match="did you mean train[.]batch_size"):
        load_config(REPO / "configs" / "ssd300_coco.py", ["train.bach_size=3"])


MAX_BOXES = 25
boxes_strategy = st.lists(
    st.tuples(st.floats(0, 90), st.floats(0, 90), st.floats(2, 40), st.floats(2, 40)),
    min_size=1,
    max_size=MAX_BOXES,
)


def pad_boxes(b: np.ndarray) -> np.ndarray:
    """``b`` followed by unit boxes up to MAX_BOXES rows: the hypothesis tests call the box
    functions with one shape (else each example's shape compiles its own programs)."""
    return np.concatenate([b, np.tile([[0, 0, 1, 1]], (MAX_BOXES - len(b), 1))]).astype(b.dtype)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pairwise_iou(a, b), computed on padded inputs."""
    return np.asarray(pairwise_iou(pad_boxes(a), pad_boxes(b)))[: len(a), : len(b)]


@settings(max_examples=30, deadline=None)
@given(boxes_strategy, st.data())
def test_nms_properties(raw, data):
    b = np.array([[x, y, x + w, y + h] for x, y, w, h in raw], np.float32)
    n = len(b)
    scores = np.array(data.draw(st.lists(st.floats(0.05, 1), min_size=n, max_size=n)), np.float32)
    labels = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int32)
    # padded to MAX_BOXES with invalid (masked) boxes of the top score and label 0
    pad = MAX_BOXES - n
    keep, count = jax.jit(batched_nms, static_argnums=(4, 5))(
        pad_boxes(b),
        np.concatenate([scores, np.ones(pad, np.float32)]),
        np.concatenate([labels, np.zeros(pad, np.int32)]),
        np.arange(MAX_BOXES) < n,
        0.45,
        10,
    )
    keep = np.asarray(keep)[: int(count)]
    assert len(set(keep.tolist())) == len(keep) and np.all(keep >= 0)  # a subset of the input
    assert np.all(keep < n)  # no masked box
    assert np.all(np.diff(scores[keep]) <= 0)  # by descending score
    kept_iou = iou(b[keep], b[keep])
    same = labels[keep][:, None] == labels[keep][None, :]
    np.fill_diagonal(same, False)
    assert not np.any(kept_iou[same] > 0.45 + 1e-6)  # no kept pair overlaps
    if n <= 10:  # every box is kept or suppressed by a kept, higher-scoring one of its class
        kept = set(keep.tolist())
        for i in set(range(n)) - kept:
            ious = iou(b[i : i + 1], b[list(kept)])[0] if kept else np.zeros(0)
            assert any(
                iou_ > 0.45 and labels[k] == labels[i] and scores[k] >= scores[i]
                for iou_, k in zip(ious, kept)
            )


@settings(max_examples=50, deadline=None)
@given(boxes_strategy, boxes_strategy)
def test_encode_decode_round_trip(anchors_raw, gts_raw):
    m = min(len(anchors_raw), len(gts_raw))
    a = np.array([[x, y, x + w, y + h] for x, y, w, h in anchors_raw[:m]], np.float32)
    g = np.array([[x, y, x + w, y + h] for x, y, w, h in gts_raw[:m]], np.float32)
    d = np.asarray(box_coder.encode(pad_boxes(a), pad_boxes(g)))  # row by row: padding is inert
    # Round trip holds while |log(gw/pw)| stays under the decoder's clamp (|log 0.016|).
    assert np.all(np.abs(d[:m, 2:] * 0.2) < 4.135)
    np.testing.assert_allclose(np.asarray(box_coder.decode(pad_boxes(a), d))[:m], g, atol=1e-3)


@settings(max_examples=50, deadline=None)
@given(boxes_strategy, boxes_strategy)
def test_iou_symmetric_and_bounded(a_raw, b_raw):
    a = np.array([[x, y, x + w, y + h] for x, y, w, h in a_raw], np.float32)
    b = np.array([[x, y, x + w, y + h] for x, y, w, h in b_raw], np.float32)
    ab, ba = iou(a, b), iou(b, a)
    np.testing.assert_allclose(ab, ba.T, atol=1e-6)
    assert np.all((ab >= 0) & (ab <= 1 + 1e-6))
    np.testing.assert_allclose(np.diag(iou(a, a)), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["pointwise", "depthwise_s1", "depthwise_s2"])
def test_fast_convolutions_equal_lax_convolution(kind):
    """PointwiseConv / DepthwiseConv (the CPU-fast forms) give nn.Conv's values and gradients
    with the same parameters."""
    import flax.linen as nn

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 9, 6)).astype(np.float32))
    if kind == "pointwise":
        fast, ref = PointwiseConv(5), nn.Conv(5, (1, 1))
        assert isinstance(conv(5, 1), PointwiseConv) and isinstance(conv(5, 1, padding=1), nn.Conv)
    else:
        s = 1 if kind == "depthwise_s1" else 2
        fast = DepthwiseConv(3, s, 1)
        ref = nn.Conv(6, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), feature_group_count=6)
    params = fast.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(
        lambda p: p + jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params
    )
    assert jax.tree.map(jnp.shape, ref.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
        jnp.shape, params
    )

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    g_fast = jax.grad(lambda p, x: loss(fast, p, x), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: loss(ref, p, x), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_fast, g_ref)


def test_pointwise_weight_gradient_reads_the_output_gradient_in_place():
    """The 1×1 conv → BatchNorm → ReLU6 backward on XLA:CPU contracts the rows of the output
    gradient as it lies ([N·H·W, C_out]); with a 4-D product it first copied it transposed to
    [C_out, N·H·W] (139 ms of SSDLite's 1.2 s train step at batch 8, layer2_0)."""
    import re

    from ssd_jax.models.layers import ConvModule

    module = ConvModule(24, 1, norm=True, act="relu6")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 8)).astype(np.float32))
    variables = module.init(jax.random.PRNGKey(0), x)

    def loss(params, x):
        y, _ = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(y * y)

    hlo = jax.jit(jax.grad(loss)).lower(variables["params"], x).compile().as_text()
    weight_grads = [line for line in hlo.splitlines() if re.search(r"= f32\[8,24\]\S* dot\(", line)]
    assert len(weight_grads) == 1, hlo
    transposed = [line.strip() for line in hlo.splitlines() if re.search(r"= f32\[24,512\]", line)]
    assert not transposed, transposed


@pytest.mark.parametrize("group,sync", [(4, False), (2, False), (4, True)])
def test_batchnorm_gradient_equals_autodiff_of_its_definition(group, sync):
    """float64: train-mode BatchNorm's written-out gradient (layers._train_norm) equals JAX's
    autodiff of the textbook normalisation, per group of images and with SyncBN over two
    (vmapped) devices; the forward and the statistics too."""
    from ssd_jax.models.layers import _SyncAxis, _train_norm

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(2.0, 3.0, size=(2, 4, 3, 5, 6)))  # [devices, N, H, W, C]
        scale, bias = jnp.asarray(rng.normal(size=6)), jnp.asarray(rng.normal(size=6))
        weights = jnp.asarray(rng.normal(size=x.shape))
        axis = _SyncAxis("devices", None) if sync else None

        def textbook(x, scale, bias):
            groups = x.reshape(-1, group, *x.shape[1:])  # [G, group, H, W, C]
            mean = groups.mean(axis=(1, 2, 3))
            mean = jax.lax.pmean(mean, "devices") if sync else mean
            var = jnp.square(groups - mean[:, None, None, None]).mean(axis=(1, 2, 3))
            var = jax.lax.pmean(var, "devices") if sync else var
            norm = (groups - mean[:, None, None, None]) / jnp.sqrt(var[:, None, None, None] + 1e-3)
            return (norm * scale + bias).reshape(x.shape), mean, var

        def ours(x, scale, bias):
            return _train_norm(axis, group, 1e-3, x, scale, bias)

        def loss(fn, x, scale, bias, w):
            return jnp.sum(jnp.sin(fn(x, scale, bias)[0]) * w)

        for fn_out_a, fn_out_b in zip(
            jax.vmap(ours, (0, None, None), axis_name="devices")(x, scale, bias),
            jax.vmap(textbook, (0, None, None), axis_name="devices")(x, scale, bias),
        ):
            np.testing.assert_allclose(fn_out_a, fn_out_b, rtol=1e-12, atol=1e-12)
        grads = [
            jax.vmap(
                jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2)),
                (0, None, None, 0),
                axis_name="devices",
            )(x, scale, bias, weights)
            for fn in (ours, textbook)
        ]
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride,size", [(1, 7), (2, 9), (2, 8)])
def test_depthwise_gradient_equals_autodiff_of_its_definition(stride, size):
    """float64: the depthwise layer's one-pass backward (layers.depthwise_one_pass: all k²
    kernel gradients in one reduction) equals JAX's autodiff of the plain sum of shifted windows,
    and both equal a grouped convolution's gradients, for strides 1 and 2 at odd and even sizes."""
    from ssd_jax.models.layers import depthwise_one_pass, depthwise_sum

    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(2, size, size + 1, 5)))
        kernel = jnp.asarray(rng.normal(size=(3, 3, 5)))

        def grouped(x, kernel):
            return jax.lax.conv_general_dilated(
                x,
                kernel[:, :, None],
                (stride, stride),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=5,
                precision=jax.lax.Precision.HIGHEST,
            )

        weights = jnp.asarray(rng.normal(size=grouped(x, kernel).shape))
        results = []
        for fn in (depthwise_one_pass, depthwise_sum, grouped):
            f = functools.partial(fn, stride=stride, padding=1) if fn is not grouped else fn
            y, vjp = jax.vjp(f, x, kernel)
            results.append((y, *vjp(jnp.sin(y) * weights)))
        for ours, other in zip(results[0], results[1]):
            np.testing.assert_allclose(ours, other, rtol=1e-12, atol=1e-12)
        for ours, other in zip(results[0], results[2]):
            np.testing.assert_allclose(ours, other, rtol=1e-10, atol=1e-10)


def test_depthwise_takes_the_one_pass_gradient_from_its_minimum_width():
    """DepthwiseConv differentiates inputs at least ONE_PASS_MIN_WIDTH wide with the one-pass
    backward and narrower ones by autodiff (so the 128 px shapes model, README command 1's,
    sums its gradients as before): the gradient program holds the one pass's variadic reduction
    exactly then."""
    import re

    from ssd_jax.models.layers import ONE_PASS_MIN_WIDTH, DepthwiseConv

    def uses_one_pass(width):
        layer = DepthwiseConv(kernel_size=3, stride=1, padding=1)
        x = jnp.zeros((1, 3, width, 2))
        variables = layer.init(jax.random.PRNGKey(0), x)
        jaxpr = jax.make_jaxpr(jax.grad(lambda v: layer.apply(v, x).sum()))(variables)
        return re.search(r"\breduce\[", str(jaxpr)) is not None

    assert uses_one_pass(ONE_PASS_MIN_WIDTH)
    assert not uses_one_pass(ONE_PASS_MIN_WIDTH - 1)
    assert ONE_PASS_MIN_WIDTH > 64  # the shapes model's widest depthwise input


@pytest.mark.parametrize("dilation", [1, 6])
def test_row_product_conv_equals_the_convolution(dilation):
    """RowProductConv (bf16 k×k convolutions on CPU as k matrix products with float32 sums)
    equals the float32 convolution of the same bf16-rounded input and weights, up to the final
    rounding to bf16; with few channels it falls back to the convolution itself."""
    from ssd_jax.models.layers import RowProductConv

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 13, 11, 16)).astype(np.float32)).astype(jnp.bfloat16)
    for min_channels in (0, 256):  # the product form, then the fallback
        module = RowProductConv(
            8, 3, padding=dilation, dilation=dilation, min_channels=min_channels
        )
        params = module.init(jax.random.PRNGKey(0), x)
        params = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params
        )
        got = np.asarray(module.apply(params, x), np.float32)
        kernel = params["params"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32)
        want = jax.lax.conv_general_dilated(
            x.astype(jnp.float32),
            kernel,
            (1, 1),
            ((dilation, dilation),) * 2,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        want = np.asarray(want + params["params"]["bias"].astype(jnp.bfloat16).astype(jnp.float32))
        assert got.shape == want.shape == (2, 13, 11, 8)
        assert np.abs(got - want).max() <= 2**-8 * np.abs(want).max(), min_channels


def _products(jaxpr) -> list:
    """Every convolution and matrix product of a jaxpr, nested jaxprs (jit, remat, custom
    derivatives, loops) included: (primitive name, its ``precision`` parameter)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append((eqn.primitive.name, eqn.params.get("precision")))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr → Jaxpr
                if hasattr(sub, "eqns"):
                    found += _products(sub)
    return found


def _full_precision(precision) -> bool:
    operands = precision if isinstance(precision, (tuple, list)) else (precision,)
    return all(p == jax.lax.Precision.HIGHEST for p in operands)


@pytest.mark.parametrize("name", ["ssdlite_shapes", "ssd300_coco"])
def test_float32_products_at_full_precision(name):
    """A float32 model asks XLA for full precision in every convolution and matrix product of
    its training step, forward and backward (a GPU would otherwise use TF32: mmdetection's
    detections no longer matched on an H200); a bf16 model keeps the default in all of them."""
    from ssd_jax import objective
    from ssd_jax.models.assembly import config_anchors, init_variables, model_for

    config = load_config(REPO / "configs" / f"{name}.py")
    counts = {}
    for precision in ("fp32", "bf16"):
        c = config.copy_and_resolve_references()
        c.precision = precision
        model, s = model_for(c), c.input_size
        variables = jax.eval_shape(functools.partial(init_variables, model, s))
        x = jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32)
        boxes = jax.ShapeDtypeStruct((2, 3, 4), jnp.float32)
        labels = jax.ShapeDtypeStruct((2, 3), jnp.int32)
        valid = jax.ShapeDtypeStruct((2, 3), jnp.bool_)
        flat = jnp.asarray(np.concatenate(config_anchors(c, model)))

        def total(params, batch_stats, x, b, l, v, c=c, model=model, flat=flat):
            out = objective.ssd_loss(
                model,
                {"params": params, "batch_stats": batch_stats},
                x,
                b,
                l,
                v,
                flat,
                train=True,
                target_cfg=objective.target_settings(c),
            )
            return out.loss_cls.sum() + out.loss_bbox.sum()

        jaxpr = jax.make_jaxpr(jax.grad(total))(
            variables["params"], variables["batch_stats"], x, boxes, labels, valid
        )
        products = _products(jaxpr.jaxpr)
        full = [_full_precision(p) for _, p in products]
        counts[precision] = (len(products), sum(full))
    n32, full32 = counts["fp32"]
    n16, full16 = counts["bf16"]
    assert n32 >= 40 and full32 == n32, counts  # forward and backward, every one of them
    assert n16 >= 40 and full16 == 0, counts


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 3)])
def test_row_product_conv_in_float64(stride, dilation):
    """In float64 (where ``conv`` picks it on CPU, for any stride) RowProductConv equals the
    float64 convolution to rounding."""
    from ssd_jax.models.layers import RowProductConv

    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 11, 9, 5)))
        module = RowProductConv(
            7,
            3,
            padding=dilation,
            dilation=dilation,
            stride=stride,
            dtype=jnp.float64,
            min_channels=0,
        )
        assert isinstance(
            conv(7, 3, stride, dilation, dilation=dilation, dtype=jnp.float64), RowProductConv
        )
        params = module.init(jax.random.PRNGKey(0), x)
        got = np.asarray(module.apply(params, x))
        want = (
            jax.lax.conv_general_dilated(
                x,
                params["params"]["kernel"],
                (stride, stride),
                ((dilation, dilation),) * 2,
                rhs_dilation=(dilation, dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            + params["params"]["bias"]
        )
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "size, padding, dilation",
    [(19, 6, 6), (13, 6, 6), (5, 6, 6), (10, 3, 3), (9, 0, 2), (8, 4, 2)],
)
def test_tap_products_equal_the_dilated_convolution(size, padding, dilation):
    """TapProductConv (float32 dilated convolutions on CPU: a product per kernel tap over the
    outputs where the tap reads the input, not its padding) gives the convolution's values and
    gradients in float64: SSD300's fc6 (19 px, dilation 6) and SSD512's geometry, a map where
    only the centre tap reads the input (5 px), no padding, and padding other than the
    dilation (outputs larger than the input)."""
    from ssd_jax.models.layers import TapProductConv

    assert isinstance(conv(7, 3, padding=6, dilation=6), TapProductConv)  # float32, CPU
    assert not isinstance(conv(7, 3, padding=1), TapProductConv)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, size, size + 1, 5)))
        module = TapProductConv(7, 3, padding, dilation, dtype=jnp.float64)
        params = module.init(jax.random.PRNGKey(0), x)
        params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape)), params)

        def reference(params, x):
            y = jax.lax.conv_general_dilated(
                x,
                params["params"]["kernel"],
                (1, 1),
                ((padding, padding),) * 2,
                rhs_dilation=(dilation, dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            return y + params["params"]["bias"]

        got, want = module.apply(params, x), reference(params, x)
        assert got.dtype == jnp.float64 and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-12)
        weights = jnp.asarray(rng.normal(size=want.shape))
        loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)) * weights)  # noqa: E731
        g_got = jax.grad(loss(module.apply), argnums=(0, 1))(params, x)
        g_want = jax.grad(loss(reference), argnums=(0, 1))(params, x)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-11), g_got, g_want
        )
