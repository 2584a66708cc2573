"""The runtime's numpy preprocessing agrees with torchvision's eval transform."""

import numpy as np
import pytest
from PIL import Image

from tledge.artifact import Preprocess
from tledge.runtime.images import load_image
from tledge.runtime.preprocess import crop_box, preprocess_one, resized_size
from tledge.samples import sample_root
from tledge.train.data import eval_transform

CONFIGS = [
    Preprocess(),
    Preprocess(resize_mode="stretch"),
    Preprocess(crop_size=64, resize_size=72, interpolation="bicubic"),
    Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), color_order="BGR"),
]


def _pairs(cfg):
    tf = eval_transform(cfg)
    files = sorted(sample_root().rglob("*.jpg"))[::4]
    assert len(files) >= 15
    for path in files:
        rgb = load_image(path)
        ref_in = rgb[:, :, ::-1].copy() if cfg.color_order == "BGR" else rgb
        yield path, rgb, tf(Image.fromarray(ref_in)).numpy()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.resize_mode}-{c.interpolation}-{c.color_order}")
def test_runtime_matches_torchvision(cfg):
    for path, rgb, ref in _pairs(cfg):
        got = preprocess_one(rgb, cfg)
        assert got.shape == ref.shape == (3, cfg.crop_size, cfg.crop_size)
        assert np.abs(got - ref).max() < 1e-5, path


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["shorter_side", "stretch"])
def test_fast_live_frame_path_is_within_one_grey_level(cfg):
    one_level = 1.0 / 255.0 / min(cfg.std) + 1e-5
    for path, rgb, ref in _pairs(cfg):
        diff = np.abs(preprocess_one(rgb, cfg, fast=True) - ref)
        assert diff.max() <= one_level, path
        assert diff.mean() < 0.3 * one_level, path


@pytest.mark.parametrize("w,h", [(640, 360), (300, 200), (200, 300), (256, 256), (1000, 17)])
def test_resize_and_crop_arithmetic_matches_torchvision(w, h):
    import torch
    from torchvision.transforms import v2

    cfg = Preprocess()
    out = v2.Resize(cfg.resize_size, antialias=True)(torch.zeros(3, h, w))
    assert resized_size(w, h, cfg) == (out.shape[2], out.shape[1])
    nw, nh = resized_size(w, h, cfg)
    left, top, _, _ = crop_box(nw, nh, cfg.crop_size)
    marker = torch.arange(nh * nw, dtype=torch.float32).reshape(1, nh, nw)
    cropped = v2.CenterCrop(cfg.crop_size)(marker)
    assert cropped[0, 0, 0].item() == top * nw + left
