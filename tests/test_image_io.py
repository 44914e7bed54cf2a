"""Reading image files (``ssd_jax.image_io``): modes, EXIF, errors that name the file."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from ssd_jax.image_io import ImageReadError, list_images, read_image_rgb


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_with_alpha_drops_alpha(tmp_path):
    rgba = np.dstack([_random_rgb(6, 5), np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = read_image_rgb(tmp_path / "a.png")
    assert image.shape == (6, 5, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgba[..., :3])


def test_grayscale_png_has_three_equal_channels(tmp_path):
    gray = _random_rgb(4, 7)[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    image = read_image_rgb(tmp_path / "g.png")
    assert image.shape == (4, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "g16.png")
    image = read_image_rgb(tmp_path / "g16.png")
    assert image.shape == (1, 3, 3)
    assert image[0, 0, 0] == 0 and abs(int(image[0, 1, 0]) - 128) <= 1 and image[0, 2, 0] == 255


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    image = read_image_rgb(tmp_path / "c.jpg")
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(_random_rgb(20, 40)).save(tmp_path / "o.jpg", exif=exif)
    assert read_image_rgb(tmp_path / "o.jpg").shape == (40, 20, 3)


def _truncated_jpeg(path: pathlib.Path) -> None:
    Image.fromarray(_random_rgb(32, 32)).save(path.with_suffix(".full.jpg"))
    data = path.with_suffix(".full.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, make",
    [
        ("empty.png", lambda p: p.write_bytes(b"")),
        ("truncated.jpg", _truncated_jpeg),
        ("notes.jpg", lambda p: p.write_text("not an image\n")),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, make):
    make(tmp_path / name)
    with pytest.raises(ImageReadError, match=name):
        read_image_rgb(tmp_path / name)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        read_image_rgb(tmp_path / "nowhere.png")


def test_list_images_expands_directories(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    extra = tmp_path / "extra.raw"
    extra.write_bytes(b"x")
    assert list_images([str(tmp_path), str(extra)]) == [
        str(tmp_path / "a.jpg"),
        str(tmp_path / "b.PNG"),
        str(extra),
    ]
    with pytest.raises(FileNotFoundError, match="gone"):
        list_images([str(tmp_path), str(tmp_path / "gone")])
