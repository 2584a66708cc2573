"""Turn RGB uint8 images into the model's float32 NCHW batch, as the metadata says.

The arithmetic copies torchvision's eval transform on PIL images (``Resize(int)`` with
PIL's antialiased filter, ``CenterCrop``, ``ToTensor``, ``Normalize``), so the runtime sees
exactly what the PyTorch side saw; ``tests/test_preprocess_parity.py`` holds them together.
"""

from __future__ import annotations

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


def preprocess_one(image: np.ndarray, cfg: Preprocess) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, crop, crop), normalised."""
    img = Image.fromarray(image)
    new_size = resized_size(img.width, img.height, cfg)
    if new_size != img.size:
        img = img.resize(new_size, _RESAMPLE[cfg.interpolation])
    if img.size != (cfg.crop_size, cfg.crop_size):
        img = _center_crop(img, cfg.crop_size)
    arr = np.asarray(img, dtype=np.float32)
    if cfg.color_order == "BGR":
        arr = arr[:, :, ::-1]
    arr = arr / np.float32(255.0)
    arr = (arr - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_batch(images: list[np.ndarray], cfg: Preprocess) -> np.ndarray:
    """List of RGB uint8 arrays -> float32 (n, 3, crop, crop)."""
    return np.stack([preprocess_one(im, cfg) for im in images])


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    if img.width < size or img.height < size:
        # Only reachable with resize_size < crop_size, which validation forbids; pad like
        # torchvision would rather than fail on a hand-written config.
        padded = Image.new("RGB", (max(size, img.width), max(size, img.height)))
        padded.paste(img, ((padded.width - img.width) // 2, (padded.height - img.height) // 2))
        img = padded
    return img.crop(crop_box(img.width, img.height, size))
