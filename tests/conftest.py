"""Shared helpers: random but non-trivial ECBSR models written in every checkpoint layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ecbconvert.arch import ECBSR
from ecbconvert.config import ModelConfig, config_yaml_text

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LAYOUTS = ("paper", "legacy", "basicsr_params", "basicsr_ema", "dataparallel", "cuda_saved")


def random_model(cfg: ModelConfig, seed: int = 0, dtype=torch.float64) -> ECBSR:
    """An ECBSR whose every weight is random and O(1) scaled, so no branch hides behind another."""
    g = torch.Generator().manual_seed(seed)
    model = ECBSR(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".mask"):
                continue
            if name.endswith("act.weight"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) * 0.5)
            else:
                fan = max(1, p[0].numel()) if p.ndim > 1 else 4
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) / fan**0.5)
    return model.eval()


def layout_state(model: ECBSR, layout: str) -> object:
    """model's weights as the given real-world layout would hold them (DESIGN.md §4)."""
    sd = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    n = model.cfg.module_nums + 2
    if layout == "paper" or layout == "cuda_saved":
        return sd
    if layout == "legacy":
        out = {}
        for k, v in sd.items():
            d, rest = k.split(".", 2)[1], k.split(".", 2)[2]
            d = int(d)
            name = "head.0" if d == 0 else "tail.0" if d == n - 1 else f"body.{d - 1}"
            out[f"{name}.{rest}"] = v
        return out
    if layout == "basicsr_params":
        return {"params": sd}
    if layout == "basicsr_ema":
        return {"params": {k: torch.zeros_like(v) for k, v in sd.items()}, "params_ema": sd}
    if layout == "dataparallel":
        return {f"module.{k}": v for k, v in sd.items()}
    raise ValueError(layout)


def write_checkpoint(path: Path, model: ECBSR, layout: str = "paper", *, with_yaml: bool = True) -> Path:
    torch.save(layout_state(model, layout), path)
    if with_yaml:
        path.with_suffix(".yml").write_text(config_yaml_text(model.cfg))
    return path


@pytest.fixture
def small_cfg() -> ModelConfig:
    return ModelConfig(module_nums=2, channel_nums=8, scale=2)


@pytest.fixture
def small_ckpt(tmp_path, small_cfg) -> Path:
    return write_checkpoint(tmp_path / "small.pt", random_model(small_cfg))
