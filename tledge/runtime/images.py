"""Decode any image file into an RGB uint8 array, or raise an ImageError naming the file.

Both halves of tledge load images through here, so training and runtime see the same pixels.
Every array in tledge is RGB, H x W x 3, uint8 (frame sources convert OpenCV's BGR).

Limits, each checked before the expensive step it guards, each refusal naming the file, the
value and the limit (values a real photo or panorama does not reach):

- ``MAX_FILE_BYTES`` (100 MiB): from ``stat`` (or ``len``) before a byte is read; files are
  decoded from an open handle, never copied whole into memory.
- ``MAX_PIXELS`` (50 MP, e.g. 8660 x 5773) and ``MAX_ASPECT`` (50:1; a 360-degree phone
  panorama is ~10:1): from the header, which PIL parses without decoding pixels.
- JPEGs above ``DRAFT_ABOVE_PIXELS`` (16 MP) decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
  scaling), keeping the shorter side >= ``min_side`` (default ``DRAFT_MIN_SIDE``); smaller
  images decode exactly, so preprocessing keeps torchvision parity.
- WebP is limited to MAX_PIXELS / 2 (libwebp and PIL hold ~4 full-size RGBA buffers).
- Only the formats of ``IMAGE_SUFFIXES`` are parsed (no EPS/PDF helpers on untrusted bytes).

Peak memory: PIL holds <= 4 bytes per pixel and the result 3, converted in bands of rows, so
decoding any accepted input needs < 7 x MAX_PIXELS bytes plus decoder buffers. Stated bound:
any accepted input, ``load_image`` + ``preprocess_one``: < 450 MB above baseline
(``PEAK_MEMORY_BOUND_MB``); measured ~390 MB at worst (a 49 MP progressive CMYK JPEG), 340 MB
for a 49 MP 16-bit PNG, a few MB for every refused input (``tests/test_image_limits.py``).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from tledge.errors import ImageError
from tledge.runtime.folders import IMAGE_SUFFIXES, is_image_file, list_images

__all__ = ["IMAGE_SUFFIXES", "MAX_ASPECT", "MAX_FILE_BYTES", "MAX_PIXELS", "check_image_size",
           "check_rgb", "decode_image", "encode_jpeg", "is_image_file", "list_images",
           "load_image", "to_rgb_array"]

MAX_FILE_BYTES = 100 * 2**20
MAX_PIXELS = 50_000_000
MAX_ASPECT = 50.0
DRAFT_ABOVE_PIXELS = 16_000_000
DRAFT_MIN_SIDE = 1024
PEAK_MEMORY_BOUND_MB = 450
# PIL format names for IMAGE_SUFFIXES (PIL's JPEG opener also returns camera MPO files).
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Rows are converted this many pixels at a time, so conversions never copy a whole image.
_BAND_PIXELS = 1 << 20
# Malformed headers make PIL's plugins raise all of these; each means "not a usable image".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  ZeroDivisionError, OverflowError)


def load_image(path: str | os.PathLike, *, min_side: int | None = None) -> np.ndarray:
    """Read ``path`` as RGB uint8 (H, W, 3), applying EXIF orientation.

    Greyscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted.
    Missing, empty, corrupt, non-image or oversized files raise ImageError.
    ``min_side``: the shorter side the caller needs (e.g. the model's resize size); large
    JPEGs decode at reduced scale down to it (default ``DRAFT_MIN_SIDE``).
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise ImageError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as handle:
            _check_bytes(os.fstat(handle.fileno()).st_size, str(path))  # the file opened
            return _decode(handle, str(path), min_side)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc})") from exc


def decode_image(data: bytes, name: str = "<bytes>", *, min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to RGB uint8; see load_image."""
    if not data:
        raise ImageError(f"{name}: no image data (0 bytes)")
    _check_bytes(len(data), name)
    return _decode(io.BytesIO(data), name, min_side)


def _check_bytes(size: int, name: str) -> None:
    if size == 0:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file is too large ({size / 2**20:.0f} MiB; the limit is "
                         f"{MAX_FILE_BYTES / 2**20:.0f} MiB); downscale or re-encode it")


def _decode(handle: BinaryIO, name: str, min_side: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Our own limits come first, with clearer messages.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle, formats=FORMATS) as img:
                # libwebp and PIL hold ~4 full-size RGBA copies while decoding: half the pixels.
                limit = MAX_PIXELS // 2 if img.format == "WEBP" else MAX_PIXELS
                check_image_size(*img.size, name, max_pixels=limit)
                _draft_large_jpeg(img, min_side or DRAFT_MIN_SIDE)
                orientation = _orientation(img)
                rgb = to_rgb_array(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image (unknown or corrupt format)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from exc
    return _orient(rgb, orientation)


def check_image_size(width: int, height: int, name: str = "image",
                     max_pixels: int | None = None) -> None:
    """Refuse sizes above ``max_pixels`` (default MAX_PIXELS) or beyond MAX_ASPECT.

    The message names the size and the limit.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageError(f"{name}: image is too large ({width}x{height} = "
                         f"{width * height / 1e6:.0f} MP; the limit is {limit / 1e6:.0f} MP); "
                         "downscale it first")
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise ImageError(f"{name}: image is too narrow ({width}x{height}, aspect ratio "
                         f"{aspect:.0f}:1; the limit is {MAX_ASPECT:.0f}:1); crop it first")


def _draft_large_jpeg(img: Image.Image, min_side: int) -> None:
    """Ask libjpeg for a 1/2..1/8 scale decode when the image is far above what is needed."""
    width, height = img.size
    min_side = max(1, min_side)
    if img.format not in ("JPEG", "MPO") or width * height <= DRAFT_ABOVE_PIXELS:
        return
    short = min(width, height)
    if short >= 2 * min_side:  # PIL picks the largest scale keeping at least the asked size
        img.draft(None, (max(1, width * min_side // short), max(1, height * min_side // short)))


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent or unreadable)."""
    value = img.getexif().get(0x0112, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation as ``ImageOps.exif_transpose`` would, on the array (one copy)."""
    if orientation == 1:
        return rgb
    if orientation in (5, 6, 7, 8):
        # 6 and 8 are quarter turns; 5 and 7 mirror across a diagonal.
        rgb = {5: rgb, 6: rgb[::-1], 7: rgb[::-1, ::-1], 8: rgb[:, ::-1]}[orientation]
        rgb = rgb.transpose(1, 0, 2)
    else:
        rgb = {2: rgb[:, ::-1], 3: rgb[::-1, ::-1], 4: rgb[::-1]}[orientation]
    return np.ascontiguousarray(rgb)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an RGB uint8 array (H, W, 3), a band at a time.

    16- and 32-bit greyscale scale by 255/65535 (255/255 when an ``I``/``F`` image's
    maximum is <= 255), rounded; alpha is composited on white.
    """
    width, height = img.size
    out = np.empty((height, width, 3), np.uint8)
    convert = _band_converter(img)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        out[top:bottom] = convert(img.crop((0, top, width, bottom)))
    return out


def _band_converter(img: Image.Image):
    """A function: PIL band of ``img``'s mode -> uint8 (rows, W, 3)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        high = img.getextrema()[1] if not img.mode.startswith("I;16") else 65535
        scale = 255.0 / (65535.0 if high > 255 else 255.0)

        def grey(band: Image.Image) -> np.ndarray:
            # float64 on one band only: same rounding as a whole-image conversion.
            values = np.nan_to_num(np.asarray(band, dtype=np.float64))
            level = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
            return level[:, :, None]

        return grey
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            img.mode == "P" and "transparency" in img.info):
        def composite(band: Image.Image) -> np.ndarray:
            rgba = band.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))

        return composite
    return lambda band: np.asarray(band if band.mode == "RGB" else band.convert("RGB"))


def check_rgb(image: np.ndarray, name: str = "array") -> np.ndarray:
    """Validate an in-memory image: H x W x 3 uint8 (greyscale H x W is expanded).

    Arrays above MAX_PIXELS or beyond MAX_ASPECT are refused like files.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array or a path, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) \
            or min(image.shape[:2]) < 1:
        raise ImageError(f"{name}: expected an H x W x 3 RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected dtype uint8, got {image.dtype}")
    check_image_size(image.shape[1], image.shape[0], name)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def encode_jpeg(image: np.ndarray, max_side: int = 512, quality: int = 90) -> bytes:
    """Encode an RGB array as JPEG, downscaled so its longer side is at most ``max_side``."""
    img = Image.fromarray(check_rgb(image))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
