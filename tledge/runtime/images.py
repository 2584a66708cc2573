"""Decode any image file into an RGB uint8 array, or raise an ImageError naming the file.

Both halves of tledge load images through here, so training and runtime see the same pixels.
Every array in tledge is RGB, H x W x 3, uint8 (frame sources convert OpenCV's BGR).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tledge.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Above this many pixels an image is refused rather than decoded (a 20k x 20k scan is ~1.6 GB).
MAX_PIXELS = 200_000_000


def is_image_file(path: Path) -> bool:
    hidden = path.name.startswith(".")
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not hidden


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, following symbolic links), sorted by path."""
    root = Path(root)
    if root.is_file():
        return [root] if is_image_file(root) else []
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if is_image_file(Path(folder) / f)]
    return sorted(found)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as RGB uint8 (H, W, 3), applying EXIF orientation.

    Greyscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted.
    Missing, empty, corrupt, non-image or oversized files raise ImageError.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    try:
        return _decode(path.read_bytes(), str(path))
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc})") from exc


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to RGB uint8; see load_image."""
    if not data:
        raise ImageError(f"{name}: no image data (0 bytes)")
    return _decode(data, name)


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below, with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: image is too large ({w}x{h} = {w * h / 1e6:.0f} MP; "
                        f"the limit is {MAX_PIXELS / 1e6:.0f} MP); downscale it first"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb_array(img)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from exc


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an RGB uint8 array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def check_rgb(image: np.ndarray, name: str = "array") -> np.ndarray:
    """Validate an in-memory image: H x W x 3 uint8 (greyscale H x W is expanded)."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array or a path, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ImageError(f"{name}: expected an H x W x 3 RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected dtype uint8, got {image.dtype}")
    return image[:, :, :3]


def encode_jpeg(image: np.ndarray, max_side: int = 512, quality: int = 90) -> bytes:
    """Encode an RGB array as JPEG, downscaled so its longer side is at most ``max_side``."""
    img = Image.fromarray(check_rgb(image))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
