"""Flax modules of the SSD family (NHWC)."""

from ssd_jax.models.ssd import SSD, build_model

__all__ = ["SSD", "build_model"]
