"""Fuzzing ``read_image_rgb``: every file under an image extension decodes or raises ImageReadError.

Cases: random bytes (alone or after a real format's magic number) under each of
``IMAGE_EXTENSIONS``, valid files cut at random points, valid headers followed by garbage, and
bit flips — of JPEG/PNG/BMP/WebP/TIFF files and of other formats Pillow recognises by content
(GIF, ICO, DDS, JPEG 2000, AVIF, ...) saved under an image extension. The reader must return a
uint8 (H, W, 3) array or raise ``ImageReadError`` naming the file — the one error the data
pipeline catches to skip and count a corrupt image — and never hang (``bounded``).

Pillow's ``Image.MAX_IMAGE_PIXELS`` is lowered to 2**20 while fuzzing (``pixel_limit``), so
that a corrupt header claiming a huge image is refused by the same check as at the default
limit, without decoding ~89 million pixels (seconds each) at the default.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import io
import os
import signal
import struct
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, features

from fuzz_cases import fuzz
from ssd_jax.data.pipeline import load_image
from ssd_jax.image_io import IMAGE_EXTENSIONS, ImageReadError, read_image_rgb

SECONDS = 10  # hard limit per read; the files are under 2 KiB and at most 2**20 pixels
FUZZ_PIXEL_LIMIT = 2**20
CASES: collections.Counter[tuple[str, str]] = collections.Counter()  # (test, outcome) -> cases
WATCHDOG = {"file": sys.stderr}  # where faulthandler prints the stacks; see ``harness``


class Hang(BaseException):
    """Raised by ``bounded``; a BaseException so that no reader's ``except`` can swallow it."""


@contextlib.contextmanager
def bounded(seconds: float = SECONDS):
    """Fail the block if it runs past ``seconds`` (SIGALRM); if C code never returns to Python
    to notice, faulthandler kills the run at 3x, printing every thread's stack."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True, file=WATCHDOG["file"])
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def current_test() -> str:
    """The running test's function name (parameters left out)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?")  # "tests/x.py::test_y[param] (call)"
    return test.split("::")[-1].split(" ")[0].split("[")[0]


def outcome(path) -> np.ndarray | ImageReadError:
    """The decoded image, checked to be uint8 (H, W, 3), or the ImageReadError naming the file.

    Any other exception propagates (failing the test), and so does running past ``SECONDS``.
    """
    try:
        with bounded(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd metadata and big images
            image = read_image_rgb(path)
    except ImageReadError as e:
        assert str(path) in str(e), f"error does not name the file: {e}"
        CASES[current_test(), "ImageReadError"] += 1
        return e
    except Hang as e:
        raise AssertionError(f"read_image_rgb({path}) {e}") from None
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
    assert image.shape[0] * image.shape[1] <= Image.MAX_IMAGE_PIXELS
    CASES[current_test(), "loaded"] += 1
    return image


# ---- small valid files ----


def encode(fmt: str, array: np.ndarray, mode: str | None = None, **options) -> bytes:
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, fmt, **options)
    return buffer.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)
GRAY16 = RGB[..., 0].astype(np.uint16) * 257
# name -> (extension, bytes): one per IMAGE_EXTENSIONS entry at least, several modes.
VALID = {
    "png_rgb": (".png", encode("PNG", RGB)),
    "png_rgba": (".png", encode("PNG", RGB, "RGBA")),
    "png_palette": (".png", encode("PNG", RGB, "P")),
    "png_gray16": (".png", encode("PNG", GRAY16)),
    "jpg": (".jpg", encode("JPEG", RGB)),
    "jpeg_gray": (".jpeg", encode("JPEG", RGB, "L")),
    "jpg_cmyk": (".jpg", encode("JPEG", RGB, "CMYK")),
    "jpg_progressive": (".jpg", encode("JPEG", RGB, progressive=True)),
    "bmp": (".bmp", encode("BMP", RGB)),
    "webp": (".webp", encode("WEBP", RGB)),
    "webp_lossless": (".webp", encode("WEBP", RGB, lossless=True)),
    "tif": (".tif", encode("TIFF", RGB)),
    "tiff_lzw": (".tiff", encode("TIFF", RGB, compression="tiff_lzw")),
}
assert {ext for ext, _ in VALID.values()} == set(IMAGE_EXTENSIONS)
# Formats Pillow also recognises by their content, whatever the file is called.
_OTHER = ["GIF", "ICO", "DDS", "PPM", "PCX", "SGI", "TGA", "QOI"]
_OTHER += [
    fmt for fmt, feature in [("JPEG2000", "jpg_2000"), ("AVIF", "avif")] if features.check(feature)
]
OTHER = {fmt.lower(): (".jpg", encode(fmt, RGB)) for fmt in _OTHER}
ALL = {**VALID, **OTHER}
MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff",
    b"BM",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"II*\0",
    b"MM\0*",
    b"GIF89a",
    b"DDS |",
    b"\0\0\0\x0cjP  \r\n\x87\n",
    b"P6\n",
    b"",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_images")


@pytest.fixture(scope="module", autouse=True)
def pixel_limit():
    """Lower Pillow's pixel limit while fuzzing (see the module docstring)."""
    default, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, FUZZ_PIXEL_LIMIT
    yield default
    Image.MAX_IMAGE_PIXELS = default


@pytest.fixture(scope="module")
def decoded(workdir):
    """read_image_rgb of each intact file."""
    return {
        name: read_image_rgb(write(workdir, ext, data, "ok")) for name, (ext, data) in ALL.items()
    }


@pytest.fixture(scope="module", autouse=True)
def harness(request):
    """Point the watchdog at the terminal (pytest's captured output is lost when faulthandler
    ends the process); at the end, print how many cases read_image_rgb was given, by
    test/outcome."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        WATCHDOG["file"] = os.fdopen(os.dup(2), "w")
    yield
    per_test = collections.defaultdict(collections.Counter)
    for (test, result), n in CASES.items():
        per_test[test][result] += n
    lines = [f"fuzz read_image_rgb: {sum(CASES.values())} cases"]
    lines += [f"  {test}: {dict(sorted(c.items()))}" for test, c in sorted(per_test.items())]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n".join(lines))
    WATCHDOG["file"].close()


def write(workdir, ext: str, data: bytes, stem: str = "case"):
    path = workdir / f"{stem}{ext}"
    path.write_bytes(data)
    return path


# ---- fuzzing ----


@fuzz(400)
@given(
    ext=st.sampled_from(IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)),
    magic=st.sampled_from(MAGIC),
    body=st.binary(max_size=600),
)
def test_random_bytes_under_image_extensions(workdir, ext, magic, body):
    outcome(write(workdir, ext, magic + body))


@fuzz(400)
@given(name=st.sampled_from(sorted(ALL)), fraction=st.floats(0, 1, exclude_max=True))
def test_cut_files_are_refused_or_decode_to_the_same_pixels(workdir, decoded, name, fraction):
    """A file cut short is refused, or (a cut only in trailing metadata) decodes as before."""
    ext, data = ALL[name]
    result = outcome(write(workdir, ext, data[: int(fraction * len(data))]))
    if isinstance(result, np.ndarray):
        np.testing.assert_array_equal(result, decoded[name])


@fuzz(400)
@given(
    name=st.sampled_from(sorted(ALL)),
    keep=st.integers(1, 80),
    garbage=st.binary(min_size=1, max_size=800),
)
def test_valid_header_then_garbage(workdir, name, keep, garbage):
    ext, data = ALL[name]
    outcome(write(workdir, ext, data[:keep] + garbage))


@fuzz(500)
@given(
    name=st.sampled_from(sorted(ALL)),
    flips=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=6
    ),
    in_header=st.booleans(),
)
def test_bit_flips(workdir, name, flips, in_header):
    """Flips anywhere, or in the first 64 bytes (image size, mode, chunk lengths)."""
    ext, data = ALL[name]
    damaged = bytearray(data)
    span = min(64, len(data)) if in_header else len(data)
    for fraction, bit in flips:
        damaged[int(fraction * span)] ^= 1 << bit
    outcome(write(workdir, ext, bytes(damaged)))


# ---- what the fuzzing found ----


def test_a_tiny_file_claiming_a_huge_image_is_refused_before_decoding(workdir, pixel_limit):
    """A 500-byte TIFF whose ImageLength says 13,565,964 rows (found by fuzzing): it used to
    decode, in seconds, into a 400 MB array; more than MAX_IMAGE_PIXELS is now refused."""
    data = bytearray(VALID["tif"][1])
    (ifd,) = struct.unpack_from("<I", data, 4)
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 257:  # ImageLength, a LONG
            struct.pack_into("<I", data, entry + 8, 13_565_964)
    path = write(workdir, ".tif", bytes(data), "huge")
    Image.MAX_IMAGE_PIXELS = pixel_limit  # Pillow's default, about 89 million
    try:
        result = outcome(path)
    finally:
        Image.MAX_IMAGE_PIXELS = FUZZ_PIXEL_LIMIT
    assert isinstance(result, ImageReadError)
    assert "10x13565964 pixels" in str(result) and "MAX_IMAGE_PIXELS" in str(result)


def test_decoder_errors_of_any_type_become_image_read_errors(workdir):
    """A .jpg that is really a DDS file with unknown pixel format flags: Pillow raises
    NotImplementedError (found by fuzzing, as were RuntimeError from AVIF and MemoryError from
    JPEG 2000), which escaped the data pipeline's ``except (ImageReadError, OSError)``."""
    data = bytearray(OTHER["dds"][1])
    struct.pack_into("<I", data, 80, 0)  # DDS_PIXELFORMAT.dwFlags: no known format
    path = write(workdir, ".jpg", bytes(data), "dds")
    result = outcome(path)
    assert isinstance(result, ImageReadError) and "cannot decode image" in str(result)
    message = load_image({"file_name": str(path)})  # the pipeline skips it, naming the file
    assert isinstance(message, str) and str(path) in message
