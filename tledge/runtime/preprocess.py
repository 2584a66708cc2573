"""Turn RGB uint8 images into the model's float32 NCHW batch, as the metadata says.

The arithmetic copies torchvision's eval transform on PIL images (``Resize(int)`` with
PIL's antialiased filter, ``CenterCrop``, ``ToTensor``, ``Normalize``), so the runtime sees
what the PyTorch side saw (to float rounding); ``tests/test_preprocess_parity.py`` holds
them together.

Memory: the resize holds PIL's copy of the input (4 bytes per pixel, bounded by the
images module's MAX_PIXELS) and the resized image. When the resized image would exceed
``MAX_RESIZED_CROPS`` crops (a very wide or tall input; a photo is far below), only the
central band the crop keeps is resized, from the source pixels under it plus the filter's
support: at most a grey level from the exact path, instead of allocating e.g.
256 x 3,072,000 pixels for a 1 x 12,000 strip. Normal aspect ratios stay exact.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from tledge.artifact import Preprocess

# Resized images larger than this many crops are not made whole; see the module docstring.
MAX_RESIZED_CROPS = 4
# Half-width of PIL's filters, in source pixels at scale 1 (PIL's own values).
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "nearest": 0.5}

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resized_size(width: int, height: int, cfg: Preprocess) -> tuple[int, int]:
    """(new_w, new_h) after the resize step, with torchvision's rounding."""
    if cfg.resize_mode == "stretch":
        return cfg.crop_size, cfg.crop_size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.resize_size, int(cfg.resize_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred ``size`` square, torchvision's rounding."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def preprocess_one(image: np.ndarray, cfg: Preprocess, fast: bool = False) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, crop, crop), normalised.

    ``fast`` resamples only the pixels the centre crop keeps (PIL maps the crop's box back
    into the source): about half the cost for a camera frame, but PIL's rounding then
    differs by one grey level on up to a fifth of the pixels, which moves embeddings by a
    cosine of ~1e-4. Used for live frames; enrollment, evaluation and parity stay exact
    (except beyond ``MAX_RESIZED_CROPS``, see the module docstring).
    """
    height, width = image.shape[:2]
    new_w, new_h = resized_size(width, height, cfg)
    size = cfg.crop_size
    windowed = (cfg.resize_mode == "shorter_side" and (new_w, new_h) != (width, height)
                and min(new_w, new_h) >= size)
    if windowed and (fast or new_w * new_h > MAX_RESIZED_CROPS * size * size):
        left, top, right, bottom = crop_box(new_w, new_h, size)
        if not fast:  # the whole short side: only the long axis is approximated
            left, right = (left, right) if new_w > new_h else (0, new_w)
            top, bottom = (top, bottom) if new_h > new_w else (0, new_h)
        img = resize_rgb(image, (new_w, new_h), cfg.interpolation, (left, top, right, bottom))
    else:
        img = resize_rgb(image, (new_w, new_h), cfg.interpolation)
    if img.size != (size, size):
        img = _center_crop(img, size)
    return normalise(np.asarray(img), cfg)


def resize_rgb(image: np.ndarray, size: tuple[int, int], interpolation: str,
               window: tuple[int, int, int, int] | None = None) -> Image.Image:
    """RGB uint8 (H, W, 3) resized to ``size`` = (w, h) with PIL's filter, as a PIL image.

    Without ``window``: exactly ``Image.fromarray(image).resize(size, filter)``.
    ``window`` = (left, top, right, bottom) in resized coordinates: only that part, made from
    the source pixels under it plus the filter's support (PIL maps the box back into the
    source); equal to that part of the full resize up to one grey level of rounding.
    """
    resample = _RESAMPLE[interpolation]
    if window is None:
        return Image.fromarray(image).resize(size, resample)
    height, width = image.shape[:2]
    left, top, right, bottom = window
    x0, x1, bx0, bx1 = _source_span(left, right, size[0], width, interpolation)
    y0, y1, by0, by1 = _source_span(top, bottom, size[1], height, interpolation)
    band = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return band.resize((right - left, bottom - top), resample, box=(bx0, by0, bx1, by1))


def _source_span(start: int, stop: int, out_size: int, src_size: int,
                 interpolation: str) -> tuple[int, int, float, float]:
    """(lo, hi, box0, box1): the source pixels [lo, hi) that output pixels [start, stop) of a
    ``src_size`` -> ``out_size`` resize read, and their box relative to ``lo``."""
    if (start, stop) == (0, out_size):  # the whole axis: PIL's own box, exactly
        return 0, src_size, 0, src_size
    scale = src_size / out_size
    box0, box1 = start * scale, min(stop * scale, src_size)
    support = _SUPPORT[interpolation] * max(1.0, scale)
    lo = max(0, math.floor(box0 - support) - 2)
    hi = min(src_size, math.ceil(box1 + support) + 2)
    return lo, hi, box0 - lo, box1 - lo


def normalise(crop: np.ndarray, cfg: Preprocess) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) as ``(x / 255 - mean) / std``, in one pass.

    Folded into ``x * scale + bias``; differs from the literal formula by < 1e-6.
    """
    scale, bias = _affine(cfg.mean, cfg.std)
    chw = crop.transpose(2, 0, 1)
    if cfg.color_order == "BGR":
        chw = chw[::-1]
    out = np.empty(chw.shape, np.float32)
    np.multiply(chw, scale, out=out, casting="unsafe")
    out += bias
    return out


@functools.lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (1.0 / (255.0 * s))[:, None, None].astype(np.float32), (-m / s)[:, None, None]


def preprocess_batch(images: list[np.ndarray], cfg: Preprocess, fast: bool = False) -> np.ndarray:
    """List of RGB uint8 arrays -> float32 (n, 3, crop, crop)."""
    return np.stack([preprocess_one(im, cfg, fast) for im in images])


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    if img.width < size or img.height < size:
        # Only reachable with resize_size < crop_size, which validation forbids; pad like
        # torchvision would rather than fail on a hand-written config.
        padded = Image.new("RGB", (max(size, img.width), max(size, img.height)))
        padded.paste(img, ((padded.width - img.width) // 2, (padded.height - img.height) // 2))
        img = padded
    return img.crop(crop_box(img.width, img.height, size))
