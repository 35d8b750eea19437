"""Fused weights in the order every exporter wants them, as float64 numpy arrays.

The last layer's output channels are permuted from PixelShuffle order (c·s² + i·s + j) into
depth-to-space "DCR" order ((i·s + j)·C + c), so that both TF's depth_to_space and ONNX's
DepthToSpace(mode=DCR) apply, and the image-space residual becomes a plain tile of the input
along channels (a broadcast for colors=1). Permuting weights offline costs nothing at run time;
a transpose in the graph would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig


@dataclass
class Layer:
    weight: np.ndarray  # (out, in, 3, 3)
    bias: np.ndarray  # (out,)
    act: str  # prelu | relu | rrelu | softplus | linear
    alpha: np.ndarray | None  # PReLU slopes (out,)


def dcr_permutation(colors: int, scale: int) -> np.ndarray:
    """perm[new] = old channel index, mapping PixelShuffle order to depth_to_space (DCR) order."""
    s2 = scale * scale
    return np.array([c * s2 + k for k in range(s2) for c in range(colors)])


def slopes_at_most_one(cfg: ModelConfig, plain_sd: dict) -> dict:
    """plain_sd rewritten so that every PReLU slope is ≤ 1 (same function; reparam rule)."""
    from ..reparam import prelu_slopes_at_most_one

    if cfg.act_type != "prelu":
        return plain_sd
    sd = dict(plain_sd)
    for d in range(cfg.module_nums + 1):
        key = f"backbone.{d}"
        nxt = f"backbone.{d + 1}.conv3x3.weight"
        w, b, a, wn = prelu_slopes_at_most_one(sd[f"{key}.conv3x3.weight"], sd[f"{key}.conv3x3.bias"],
                                               sd[f"{key}.act.weight"], sd[nxt])
        sd[f"{key}.conv3x3.weight"], sd[f"{key}.conv3x3.bias"], sd[f"{key}.act.weight"], sd[nxt] = w, b, a, wn
    return sd


def deploy_layers(cfg: ModelConfig, plain_sd: dict) -> list[Layer]:
    n = cfg.module_nums + 2
    layers = []
    for d in range(n):
        w = plain_sd[f"backbone.{d}.conv3x3.weight"].double().numpy()
        b = plain_sd[f"backbone.{d}.conv3x3.bias"].double().numpy()
        act = cfg.act_type if d < n - 1 else "linear"
        alpha = plain_sd[f"backbone.{d}.act.weight"].double().numpy() if act == "prelu" else None
        if d == n - 1:
            perm = dcr_permutation(cfg.colors, cfg.scale)
            w, b = w[perm], b[perm]
        layers.append(Layer(w, b, act, alpha))
    return layers


def macs(cfg: ModelConfig, h: int, w: int) -> int:
    """Multiply-accumulates of one forward pass on an h×w LR input."""
    return cfg.macs_per_lr_pixel() * h * w
