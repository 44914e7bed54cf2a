"""Training and evaluation input: dataset sources, augmentations and grain loaders.

- ``coco.CocoSource`` / ``tfds_source.TfdsSource``: random-access sources of per-image records.
- ``transforms``: mmdetection's SSD train pipeline in NumPy/OpenCV.
- ``pipeline.make_train_loader`` / ``pipeline.make_eval_loader``: batched grain loaders.

Submodules are imported explicitly (``from ssd_jax.data.pipeline import make_train_loader``) so
that importing one source does not pull in grain or TFDS.
"""
