"""A small, real ECBSR trainer following the paper's recipe.

Y channel (or RGB) in the model's value range, L1 loss, Adam 5e-4 halved at 60% and 85% of the
run, random LR/HR patch pairs made by the evaluation protocol's bicubic degradation, flips and
90° rotations. The forward pass uses each block's fused kernel, computed on the fly from the
branch weights: the same function and the same gradients as the five-branch graph (tested),
about five times cheaper. What is saved is the branch weights, in the paper's layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import images
from .config import ModelConfig
from .errors import InputError


@dataclass
class TrainResult:
    iters_done: int
    final_loss: float
    wall_s: float
    interrupted: bool


class PatchSampler:
    """Random aligned (LR, HR) patches with flips and rotations, from pre-degraded images."""

    def __init__(self, folder: Path | None, cfg: ModelConfig, patch: int, seed: int):
        folder = Path(folder) if folder is not None else images.bundled_dir("train")
        s = cfg.scale
        pairs = [images.make_pair(n, rgb, s, cfg.colors)
                 for n, rgb in images.load_images(folder, what="training image folder", min_size=2 * s)]
        self.pairs = [p for p in pairs if min(p.lr.shape[:2]) >= patch]
        if not self.pairs:
            raise InputError(f"{folder}: no training image is at least {patch * s} px on each side "
                             f"(needed for --patch {patch} at scale {s}); lower --patch or add larger images")
        self.scale, self.patch = s, patch
        self.rng = np.random.default_rng(seed)
        self.k = cfg.value_range / 255.0
        # Sample images in proportion to their area so that every pixel is equally likely.
        areas = np.array([p.lr.shape[0] * p.lr.shape[1] for p in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        lrs, hrs = [], []
        p, s = self.patch, self.scale
        for _ in range(n):
            pair = self.pairs[self.rng.choice(len(self.pairs), p=self.weights)]
            h, w = pair.lr.shape[:2]
            y, x = self.rng.integers(0, h - p + 1), self.rng.integers(0, w - p + 1)
            lr = pair.lr[y : y + p, x : x + p]
            hr = pair.hr[y * s : (y + p) * s, x * s : (x + p) * s]
            rot, flip = self.rng.integers(0, 4), self.rng.integers(0, 2)
            lr, hr = np.rot90(lr, rot), np.rot90(hr, rot)
            if flip:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            lrs.append(images.to_nchw(np.ascontiguousarray(lr), 255.0 * self.k)[0])
            hrs.append(images.to_nchw(np.ascontiguousarray(hr), 255.0 * self.k)[0])
        return np.stack(lrs), np.stack(hrs)


def train(
    cfg: ModelConfig,
    *,
    out: Path,
    images_dir: Path | None = None,
    iters: int = 4000,
    patch: int = 48,
    batch: int = 16,
    seed: int = 0,
    lr: float = 5e-4,
    threads: int = 2,
    save_every: int = 500,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train an ECBSR from scratch and save it (paper layout + YAML config beside it) to out."""
    import torch

    from .arch import ECBSR
    from .checkpoint import save_trained

    if iters < 1 or patch < 4 or batch < 1:
        raise InputError("--iters and --batch must be ≥ 1 and --patch ≥ 4")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    sampler = PatchSampler(images_dir, cfg, patch, seed)
    model = ECBSR(cfg).float().train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(iters * 0.6), int(iters * 0.85)], gamma=0.5)
    start, loss_value, done, interrupted = time.perf_counter(), float("nan"), 0, False
    try:
        for step in range(1, iters + 1):
            lr_np, hr_np = sampler.batch(batch)
            sr = model(torch.from_numpy(lr_np), fused=True)
            loss = torch.nn.functional.l1_loss(sr, torch.from_numpy(hr_np))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value, done = loss.item(), step
            if on_step:
                on_step(step, loss_value)
            if step % save_every == 0 and step < iters:
                save_trained(model, out)
    except KeyboardInterrupt:
        interrupted = True  # the last periodic checkpoint (if any) is complete and stays
    else:
        save_trained(model, out)
    return TrainResult(done, loss_value, time.perf_counter() - start, interrupted)
