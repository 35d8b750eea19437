"""Calibration inputs for full-integer quantization: real LR images made by the evaluation protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import images
from .config import ModelConfig


def lr_images(cfg: ModelConfig, folder: Path | None) -> list[np.ndarray]:
    """LR images (H, W) or (H, W, 3) in [0,255] from folder (default: the bundled training split)."""
    folder = Path(folder) if folder is not None else images.bundled_dir("train")
    loaded = images.load_images(folder, what="calibration folder", min_size=2 * cfg.scale)
    return [images.make_pair(name, rgb, cfg.scale, cfg.colors).lr for name, rgb in loaded]


def patches(cfg: ModelConfig, lrs: list[np.ndarray], *, count: int, size: tuple[int, int], seed: int = 0,
            on_item: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """count NHWC float32 patches of `size` in the model's value range, cycling over the images.

    An image smaller than size is mirrored at its edges first (real content, natural statistics),
    since a static-size file can only be calibrated at its own size.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(count):
        lr = lrs[i % len(lrs)]
        ph, pw = max(0, h - lr.shape[0]), max(0, w - lr.shape[1])
        if ph or pw:
            pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)) + ((0, 0),) * (lr.ndim - 2)
            lr = np.pad(lr, pad, mode="symmetric")
        y = rng.integers(0, lr.shape[0] - h + 1)
        x = rng.integers(0, lr.shape[1] - w + 1)
        crop = lr[y : y + h, x : x + w]
        crop = crop[..., None] if crop.ndim == 2 else crop
        if on_item:
            on_item()
        yield (crop[None] * (cfg.value_range / 255.0)).astype(np.float32)
