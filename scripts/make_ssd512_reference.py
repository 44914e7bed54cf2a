"""An SSD512 parity reference, made with ../shared/mmdet_reference/make_fixtures.py's functions:
the reference of tests/test_parity_ssd512.py.

mmdetection 3.3.0's ``ssd512_coco`` with make_fixtures' random weights (seed 13: ``randomise``
then ``calibrate``, as ``make_fixtures.py OUT ssd512_coco 13`` does) on make_fixtures' two
images. Its checkpoint is 140 MB, so it is not stored: the weights' recipe is (every draw of the
seeded generator with its shape and quantisation, and the head's power-of-two factors; see
tests/seeded_checkpoint.py, which rebuilds the checkpoint from it and is checked here to give
the same tensors bit for bit). Writes ``tests/data/ssd512/``:

- ``recipe.json``: the weights' recipe;
- ``reference.npz``, mmdetection's outputs (PyTorch layouts, as in ../shared/fixtures):
  ``image_i`` (original RGB), ``resized_i`` (mmcv.imresize bilinear to 512×512, uint8: the
  network input is ``(resized - mean) / std`` in float32), ``ori_shape_i``, ``scale_factor_i``;
  ``anchors_l{k}``; at ``positions_l{k}`` (up to 96 (y, x) cells per level, all of the small
  levels) ``cls_scores_l{k}`` / ``bbox_preds_l{k}`` (N, channels, P) and ``neck_feat_l{k}``
  (N, C, P) in eval mode; and ``det_bboxes_i``, ``det_scores_i``, ``det_labels_i`` from
  ``model.predict(..., rescale=True)``.

Run with mmdetection's environment, from the repository root:

    /tmp/mmdet_ref/venv/bin/python scripts/make_ssd512_reference.py [--check CHECKPOINT.pth]

``--check`` compares the rebuilt weights with a checkpoint written by ``make_fixtures.py``
itself (``make_fixtures.py /tmp/ssd512 ssd512_coco 13``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMDET_REFERENCE = os.path.join(REPO, "..", "shared", "mmdet_reference")
OUT = os.path.join(REPO, "tests", "data", "ssd512")
NAME, SEED, POSITIONS = "ssd512_coco", 13, 96


def load_make_fixtures():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", os.path.join(MMDET_REFERENCE, "make_fixtures.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sampled_positions(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(P, 2) (y, x) cells: all of them up to POSITIONS, else a seeded sample with the corners."""
    cells = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    if len(cells) <= POSITIONS:
        return cells
    corners = [0, w - 1, (h - 1) * w, h * w - 1]
    rest = rng.choice(np.setdiff1d(np.arange(h * w), corners), POSITIONS - 4, replace=False)
    return cells[np.sort(np.concatenate([corners, rest]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", help="a checkpoint.pth from make_fixtures.py to compare with")
    args = parser.parse_args()

    import mmcv
    import mmdet
    import torch
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from seeded_checkpoint import state_dict_from_recipe

    mf = load_make_fixtures()
    draws = []
    quantise = mf.quantise

    def recording_quantise(t, std, gen, mean=0.0):
        draws.append([tuple(t.shape), float(std), float(mf.pow2_step(std)), float(mean)])
        return quantise(t, std, gen, mean)

    mf.quantise = recording_quantise

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    cfg = Config.fromfile(os.path.join(mf.CFG_ROOT, mf.CONFIGS[NAME]))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.bbox_head.loss_cls = types.SimpleNamespace(custom_cls_channels=False)
    model.init_weights()
    mf.randomise(model, gen)
    model.eval()
    keys = list(model.state_dict())
    assert len(keys) == len(draws), "a state-dict entry was not drawn by quantise"
    recipe_draws = [[k, list(s), std, step, mean] for k, (s, std, step, mean) in zip(keys, draws)]

    pre = cfg.model.data_preprocessor
    mean, std = np.array(pre.mean, np.float32), np.array(pre.std, np.float32)
    size = cfg.input_size
    images = mf.load_images(SEED)
    resized, metas = [], []
    for img in images:
        r, ws, hs = mmcv.imresize(img, (size, size), interpolation="bilinear", return_scale=True)
        resized.append(r)
        metas.append(
            dict(
                img_shape=(size, size),
                ori_shape=img.shape[:2],
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(ws, hs),
            )
        )
    x = np.stack([(r.astype(np.float32) - mean) / std for r in resized]).transpose(0, 3, 1, 2)
    inputs = torch.from_numpy(np.ascontiguousarray(x))

    before = {k: v.clone() for k, v in model.state_dict().items()}
    mf.calibrate(model, inputs, mf.head_keys(model), target=(mf.CLS_STD, 0.5))
    after = model.state_dict()
    factors = {}
    for k in keys:
        if not torch.equal(before[k], after[k]):
            ratio = (after[k][before[k] != 0] / before[k][before[k] != 0]).unique()
            assert len(ratio) == 1, k
            factors[k] = float(ratio[0])
    recipe = {
        "model": NAME,
        "seed": SEED,
        "mmdet": mmdet.__version__,
        "mmcv": mmcv.__version__,
        "torch": torch.__version__,
        "made_by": "scripts/make_ssd512_reference.py with make_fixtures.py's randomise, calibrate",
        "draws": recipe_draws,
        "head_factors": factors,
    }
    rebuilt = state_dict_from_recipe(recipe)
    for k, v in after.items():
        assert torch.equal(rebuilt[k], v), f"the recipe does not rebuild {k}"
    if args.check:
        theirs = torch.load(args.check, map_location="cpu", weights_only=False)["state_dict"]
        assert list(theirs) == keys
        for k, v in theirs.items():
            assert torch.equal(rebuilt[k], v), f"{k} differs from {args.check}"
        print(f"the recipe rebuilds {args.check} bit for bit")

    ref: dict[str, np.ndarray] = {}
    for i, img in enumerate(images):
        ref[f"image_{i}"] = img
        ref[f"resized_{i}"] = resized[i]
        ref[f"ori_shape_{i}"] = np.array(img.shape[:2])
        ref[f"scale_factor_{i}"] = np.array(metas[i]["scale_factor"], np.float32)
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        cls, reg = model.bbox_head(feats)
        anchors = model.bbox_head.prior_generator.grid_priors(
            [c.shape[-2:] for c in cls], device="cpu"
        )
        for k, (c, r, f, a) in enumerate(zip(cls, reg, feats, anchors)):
            pos = sampled_positions(c.shape[2], c.shape[3], rng)
            ref[f"positions_l{k}"] = pos
            for name, t in (("cls_scores", c), ("bbox_preds", r), ("neck_feat", f)):
                ref[f"{name}_l{k}"] = t.numpy()[:, :, pos[:, 0], pos[:, 1]]
            ref[f"anchors_l{k}"] = a.numpy()
        samples = []
        for m in metas:
            s = DetDataSample()
            s.set_metainfo(m)
            samples.append(s)
        for i, p in enumerate(model.predict(inputs, samples, rescale=True)):
            ref[f"det_bboxes_{i}"] = p.pred_instances.bboxes.numpy()
            ref[f"det_scores_{i}"] = p.pred_instances.scores.numpy()
            ref[f"det_labels_{i}"] = p.pred_instances.labels.numpy()

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "recipe.json"), "w") as f:
        json.dump(recipe, f)
    np.savez_compressed(os.path.join(OUT, "reference.npz"), **ref)
    counts = [len(ref[f"det_scores_{i}"]) for i in range(len(images))]
    print(f"wrote {OUT}: {len(keys)} tensors from seed {SEED}, detections {counts}")


if __name__ == "__main__":
    main()
