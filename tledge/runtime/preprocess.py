"""Turn RGB uint8 images into the model's float32 NCHW batch, as the metadata says.

The arithmetic copies torchvision's eval transform on PIL images (``Resize(int)`` with
PIL's antialiased filter, ``CenterCrop``, ``ToTensor``, ``Normalize``), so the runtime sees
what the PyTorch side saw (to float rounding); ``tests/test_preprocess_parity.py`` holds
them together.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from tledge.artifact import Preprocess

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
    cosine of ~1e-4. Used for live frames; enrollment, evaluation and parity stay exact.
    """
    img = Image.fromarray(image)
    width, height = img.size
    new_w, new_h = resized_size(width, height, cfg)
    resample = _RESAMPLE[cfg.interpolation]
    if fast and cfg.resize_mode == "shorter_side" and (new_w, new_h) != (width, height):
        left, top, right, bottom = crop_box(new_w, new_h, cfg.crop_size)
        sx, sy = width / new_w, height / new_h
        img = img.resize((cfg.crop_size, cfg.crop_size), resample,
                         box=(left * sx, top * sy, right * sx, bottom * sy))
    else:
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), resample)
        if img.size != (cfg.crop_size, cfg.crop_size):
            img = _center_crop(img, cfg.crop_size)
    return normalise(np.asarray(img), cfg)


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
