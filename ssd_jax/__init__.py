"""ssd_jax: mmdetection's SSD family (SSD300, SSD512, SSDLite) in JAX/Flax."""
from ssd_jax.detector import Detector

__all__ = ["Detector"]
