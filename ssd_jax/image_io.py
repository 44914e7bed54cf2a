"""Reading image files as uint8 RGB arrays (Pillow), with errors that name the file.

Every image is fully decoded on read, so truncated files fail here rather than later;
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left at its default (False).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ssd_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Pillow decodes 16-bit grayscale PNG/TIFF into these modes; ``convert('RGB')`` would clip them.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WIDE_GRAY_MAX = 65535.0


class ImageReadError(UserError, ValueError):
    """A file that exists but cannot be decoded as an image; the message names the file."""


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as a writeable uint8 RGB array of shape (H, W, 3).

    - EXIF orientation is applied, so (H, W) is the image as displayed, not as stored.
    - Grayscale (``L``), 1-bit and palette images become three equal or palette-mapped channels.
    - 16-bit grayscale (``I;16*``; ``I`` is read as 16-bit too) is scaled 0..65535 → 0..255
      with rounding (values outside 0..65535 are clipped), not clipped to 255.
    - Alpha (RGBA, LA, palette transparency) is dropped, not composited: the colour channels
      are kept as stored.
    - CMYK (e.g. CMYK JPEG) is converted to RGB.

    Raises FileNotFoundError (naming the path) for a missing file and ImageReadError for an
    empty, truncated, corrupt or non-image file, and for one of more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89 million unless changed; a corrupt header
    can claim billions, which Pillow would then try to decode).
    """
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            _check_pixel_count(path, img)
            img.load()  # force the full decode so that truncation is detected here
            return _to_rgb_array(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not an image file (unrecognised format)") from e
    except Exception as e:  # Pillow's decoders raise many types: OSError, SyntaxError,
        # ValueError, RuntimeError (AVIF), NotImplementedError (DDS), MemoryError (JPEG 2000)
        raise ImageReadError(f"{path}: cannot decode image: {e or type(e).__name__}") from e


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "image file not found", path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")


def _check_pixel_count(path: str, img: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise ImageReadError(
            f"{path}: {img.width}x{img.height} pixels is more than "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit}); a corrupt header?"
        )


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image of any mode → uint8 (H, W, 3), alpha dropped."""
    if img.mode in _WIDE_GRAY_MODES:
        gray = np.clip(np.asarray(img, np.float64), 0.0, _WIDE_GRAY_MAX)
        gray8 = np.round(gray * (255.0 / _WIDE_GRAY_MAX)).astype(np.uint8)  # (H, W)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def list_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Image files named by ``paths``, in order; a directory expands to its image files.

    Directories are not searched recursively; their entries with an extension in
    ``IMAGE_EXTENSIONS`` (case-insensitive) are listed sorted by name. A path naming a file is
    kept whatever its extension. Raises FileNotFoundError naming every missing path.
    """
    missing = [os.fspath(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"input path(s) not found: {', '.join(missing)}")
    files: list[str] = []
    for p in map(os.fspath, paths):
        files.extend(_images_in_dir(p) if os.path.isdir(p) else [p])
    return files


def _images_in_dir(directory: str) -> list[str]:
    names = sorted(
        n
        for n in os.listdir(directory)
        if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, n))
    )
    return [os.path.join(directory, n) for n in names]
