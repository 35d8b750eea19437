"""Quantization-aware fine-tuning (QAT) of the fused plain network.

The torch graph here mirrors, tensor for tensor, the full-int8 TFLite graph that export writes
(export/tflite.py): input pinned to [0, value_range]; per layer a conv with per-channel
symmetric int8 weights whose output is quantized; PReLU as y + relu((α-1)·y) with the term and
the sum quantized; the last conv, the residual add pinned to [0, value_range], then
depth-to-space. Activation ranges are set once by the export's calibration method on the same
calibration patches and kept fixed; the weights (conv kernels, biases, PReLU slopes) learn to
live on the int8 grid with straight-through gradients, L1 against HR on the training photographs.
The result is a fused file that exports through the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


def fake_quant(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric int8 fake quantization on [lo, hi]; straight-through inside, zero grad outside."""
    scale = (hi - lo) / 255.0
    zp = round(-128 - lo / scale)
    q = (torch.clamp(torch.round(x / scale) + zp, -128, 127) - zp) * scale
    clipped = torch.clamp(x, lo, hi)
    return clipped + (q - clipped).detach()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8, as the converter quantizes conv weights."""
    scale = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.clamp(torch.round(w / scale), -127, 127) * scale
    return w + (q - w).detach()


class QATPlain(nn.Module):
    def __init__(self, cfg: ModelConfig, plain_sd: dict):
        from .export.deploy import slopes_at_most_one

        super().__init__()
        self.cfg = cfg
        plain_sd = slopes_at_most_one(cfg, plain_sd)  # the form int8 export writes: every α ≤ 1
        n = cfg.module_nums + 2
        self.weights = nn.ParameterList([nn.Parameter(plain_sd[f"backbone.{d}.conv3x3.weight"].float().clone())
                                         for d in range(n)])
        self.biases = nn.ParameterList([nn.Parameter(plain_sd[f"backbone.{d}.conv3x3.bias"].float().clone())
                                        for d in range(n)])
        self.alphas = nn.ParameterList([nn.Parameter(plain_sd[f"backbone.{d}.act.weight"].float().clone())
                                        for d in range(n - 1)] if cfg.act_type == "prelu" else [])
        self.ranges: dict[str, tuple[float, float]] = {}
        self._record: dict[str, list[torch.Tensor]] | None = None

    def _q(self, name: str, t: torch.Tensor, quant: bool) -> torch.Tensor:
        if self._record is not None:
            self._record.setdefault(name, []).append(t.detach().flatten())
        if not quant:
            return t
        return fake_quant(t, *self.ranges[name])

    def forward(self, x: torch.Tensor, *, quant: bool = True) -> torch.Tensor:
        cfg, vr = self.cfg, float(self.cfg.value_range)
        if quant:
            x = fake_quant(x, 0.0, vr)
        y = x
        n = len(self.weights)
        for d in range(n):
            w = fake_quant_weight(self.weights[d]) if quant else self.weights[d]
            y = F.conv2d(y, w, self.biases[d], padding=1)
            last = d == n - 1
            if not last and cfg.act_type == "prelu":
                y = self._q(f"{d}.conv", y, quant)
                a = self.alphas[d].view(1, -1, 1, 1)  # every α ≤ 1 here (slopes_at_most_one)
                term = self._q(f"{d}.relu", torch.relu((a - 1.0) * y), quant)
                y = self._q(f"{d}.sum", y + term, quant)
            elif not last and cfg.act_type in ("relu", "rrelu"):
                y = self._q(f"{d}.conv", torch.relu(y), quant)
            elif not last and cfg.act_type == "softplus":
                y = self._q(f"{d}.conv", F.softplus(y), quant)
            else:
                y = self._q(f"{d}.conv", y, quant)
        from .arch import residual

        out = y + residual(x, cfg.scale)
        if quant:
            out = fake_quant(out, 0.0, vr)
        return F.pixel_shuffle(out, cfg.scale)

    @torch.no_grad()
    def calibrate(self, patches: list[np.ndarray], method: str) -> None:
        """Set every activation range from the float model on the calibration patches."""
        from .quant import BINS, choose_range

        self._record = {}
        for p in patches:
            self(torch.from_numpy(np.transpose(p, (0, 3, 1, 2)).copy()), quant=False)
        record, self._record = self._record, None
        for name, parts in record.items():
            values = torch.cat(parts).numpy()
            lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
            hist = np.histogram(values, BINS, (lo, hi))[0] if hi > lo else np.zeros(BINS, np.int64)
            self.ranges[name] = choose_range(hist, lo, hi, method)

    def extras(self, method: str) -> dict:
        """What the fused file keeps so that export uses exactly these activation ranges."""
        return {"qat": {"method": method, "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()}}}

    def plain_state_dict(self) -> dict:
        sd = {}
        for d, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            sd[f"backbone.{d}.conv3x3.weight"] = w.detach().clone()
            sd[f"backbone.{d}.conv3x3.bias"] = b.detach().clone()
        for d, a in enumerate(self.alphas):
            sd[f"backbone.{d}.act.weight"] = a.detach().clone()
        return sd


@dataclass
class QATResult:
    iters: int
    first_loss: float
    last_loss: float


def finetune(cfg: ModelConfig, plain_sd: dict, *, images_dir=None, calib_dir=None, iters: int = 300,
             batch: int = 16, patch: int = 48, lr: float = 2e-5, method: str = "mse", calib_count: int = 32,
             seed: int = 0, threads: int = 2, on_step: Callable[[int, float], None] | None = None):
    """Fine-tune plain_sd with fake quantization; returns (the QATPlain model, QATResult)."""
    from . import calib
    from .train import PatchSampler

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = QATPlain(cfg, plain_sd)
    lrs = calib.lr_images(cfg, calib_dir)
    model.calibrate(list(calib.patches(cfg, lrs, count=calib_count, size=(96, 96), seed=seed)), method)
    sampler = PatchSampler(images_dir, cfg, patch, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    losses = []
    for step in range(1, iters + 1):
        lr_np, hr_np = sampler.batch(batch)
        loss = F.l1_loss(model(torch.from_numpy(lr_np)), torch.from_numpy(hr_np))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # slopes stay ≤ 1: the int8 graph keeps its two-term PReLU form
            for a in model.alphas:
                a.clamp_(max=1.0)
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
    return model, QATResult(iters, float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
