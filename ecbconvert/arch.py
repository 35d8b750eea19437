"""ECB / ECBSR (training graph) and PlainSR (deploy graph), with the published state_dict keys.

Key names follow the paper's code (xindongzhang/ECBSR) so that its checkpoints load with
strict=True. Unlike that code, float64 and colors=3 work here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reparam
from .config import ModelConfig

_MASKS = {"sbx": reparam.SOBEL_X, "sby": reparam.SOBEL_Y, "lpl": reparam.LAPLACIAN}


def make_act(act_type: str, channels: int) -> nn.Module | None:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=channels)
    if act_type == "relu":
        return nn.ReLU()
    if act_type == "rrelu":
        return nn.RReLU(-0.05, 0.05)  # the paper's choice; in eval its slope is 0, i.e. ReLU
    if act_type == "softplus":
        return nn.Softplus()
    return None  # linear


class SeqConv1x1Conv3x3(nn.Module):
    """1x1 conv (k0, b0) then unpadded 3x3 conv (k1, b1); the 1x1 output is padded with b0."""

    def __init__(self, inp: int, out: int, mid: int):
        super().__init__()
        conv0 = nn.Conv2d(inp, mid, 1)
        conv1 = nn.Conv2d(mid, out, 3)
        self.k0, self.b0 = nn.Parameter(conv0.weight.detach()), nn.Parameter(conv0.bias.detach())
        self.k1, self.b1 = nn.Parameter(conv1.weight.detach()), nn.Parameter(conv1.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(_pad_with_bias(F.conv2d(x, self.k0, self.b0), self.b0), self.k1, self.b1)

    def fused(self) -> reparam.Pair:
        return reparam.compose_1x1_kxk(self.k0, self.b0, self.k1, self.b1)


class SeqConv1x1Mask(nn.Module):
    """1x1 conv (k0, b0) then a depthwise 3x3 edge filter scale[c]·mask plus bias."""

    def __init__(self, inp: int, out: int, kind: str):
        super().__init__()
        conv0 = nn.Conv2d(inp, out, 1)
        self.k0, self.b0 = nn.Parameter(conv0.weight.detach()), nn.Parameter(conv0.bias.detach())
        self.scale = nn.Parameter(torch.randn(out, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out) * 1e-3)
        mask = torch.tensor(_MASKS[kind]).expand(out, 1, 3, 3).clone()
        self.mask = nn.Parameter(mask, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = _pad_with_bias(F.conv2d(x, self.k0, self.b0), self.b0)
        return F.conv2d(y0, reparam.scaled_mask(self.scale, self.mask), self.bias, groups=y0.shape[1])

    def fused(self) -> reparam.Pair:
        dense = reparam.depthwise_to_dense(reparam.scaled_mask(self.scale, self.mask))
        return reparam.compose_1x1_kxk(self.k0, self.b0, dense, self.bias)


def _pad_with_bias(y: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
    """Pad by one pixel whose ring holds b0 per channel (what a fused zero-padded conv sees)."""
    n, c, h, w = y.shape
    out = b0.view(1, c, 1, 1).expand(n, c, h + 2, w + 2).clone()
    out[:, :, 1:-1, 1:-1] = y
    return out


class ECB(nn.Module):
    """Edge-oriented Convolution Block: five parallel branches (+ optional identity), then act."""

    def __init__(self, inp: int, out: int, depth_multiplier: float = 2.0, act_type: str = "prelu",
                 with_idt: bool = False):
        super().__init__()
        self.inp, self.out = inp, out
        self.with_idt = bool(with_idt and inp == out)
        self.conv3x3 = nn.Conv2d(inp, out, 3, padding=1)
        self.conv1x1_3x3 = SeqConv1x1Conv3x3(inp, out, int(out * depth_multiplier))
        self.conv1x1_sbx = SeqConv1x1Mask(inp, out, "sbx")
        self.conv1x1_sby = SeqConv1x1Mask(inp, out, "sby")
        self.conv1x1_lpl = SeqConv1x1Mask(inp, out, "lpl")
        act = make_act(act_type, out)
        if act is not None:
            self.act = act
        self.act_type = act_type

    def branches(self) -> list[nn.Module]:
        return [self.conv3x3, self.conv1x1_3x3, self.conv1x1_sbx, self.conv1x1_sby, self.conv1x1_lpl]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = sum(branch(x) for branch in self.branches())
        if self.with_idt:
            y = y + x
        return self.act(y) if hasattr(self, "act") else y

    def fused(self) -> reparam.Pair:
        """The single 3x3 (weight, bias) this block computes (differentiable)."""
        pairs = [(self.conv3x3.weight, self.conv3x3.bias)] + [b.fused() for b in self.branches()[1:]]
        if self.with_idt:
            w = self.conv3x3.weight
            pairs.append(reparam.identity(self.out, 3, dtype=w.dtype, device=w.device))
        return reparam.add(*pairs)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Same function as forward(), computed with the fused kernel: the fast training path."""
        weight, bias = self.fused()
        y = F.conv2d(x, weight, bias, padding=1)
        return self.act(y) if hasattr(self, "act") else y


def residual(x: torch.Tensor, scale: int) -> torch.Tensor:
    """x repeated s² times per channel, so that PixelShuffle turns it into nearest upsampling."""
    if x.shape[1] == 1:
        return x  # broadcasts over the s² channels
    return torch.repeat_interleave(x, scale * scale, dim=1)


def layer_plan(cfg: ModelConfig) -> list[tuple[int, int, str]]:
    """(in, out, activation) of each backbone layer: the last one is always linear."""
    layers = cfg.layer_channels
    return [(i, o, cfg.act_type if d < len(layers) - 1 else "linear") for d, (i, o) in enumerate(layers)]


class ECBSR(nn.Module):
    """The training graph: backbone of ECBs, image-space residual, PixelShuffle."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = nn.Sequential(*[ECB(i, o, cfg.depth_multiplier, act, cfg.with_idt) for i, o, act in layer_plan(cfg)])
        self.upsampler = nn.PixelShuffle(cfg.scale)

    def forward(self, x: torch.Tensor, *, fused: bool = False) -> torch.Tensor:
        y = x
        for block in self.backbone:
            y = block.forward_fused(y) if fused else block(y)
        return self.upsampler(y + residual(x, self.cfg.scale))


class Conv3X3(nn.Module):
    """One deploy layer: a 3x3 conv with zero padding, then the activation."""

    def __init__(self, inp: int, out: int, act_type: str):
        super().__init__()
        self.conv3x3 = nn.Conv2d(inp, out, 3, padding=1)
        act = make_act(act_type, out)
        if act is not None:
            self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(x)
        return self.act(y) if hasattr(self, "act") else y


class PlainSR(nn.Module):
    """The deploy graph: one 3x3 conv per layer; same residual and PixelShuffle as ECBSR."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = nn.Sequential(*[Conv3X3(i, o, act) for i, o, act in layer_plan(cfg)])
        self.upsampler = nn.PixelShuffle(cfg.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.backbone(x) + residual(x, self.cfg.scale))


def fuse(model: ECBSR) -> PlainSR:
    """A new PlainSR computing the same function as model (in model's dtype). model is untouched."""
    ref = next(model.parameters())
    plain = PlainSR(model.cfg).to(dtype=ref.dtype)
    with torch.no_grad():
        for block, layer in zip(model.backbone, plain.backbone, strict=True):
            weight, bias = block.fused()
            layer.conv3x3.weight.copy_(weight)
            layer.conv3x3.bias.copy_(bias)
            if hasattr(block, "act") and isinstance(block.act, nn.PReLU):
                layer.act.weight.copy_(block.act.weight)
    return plain.eval()


def build(cfg: ModelConfig, state_dict: dict, *, fused: bool, dtype=torch.float32) -> nn.Module:
    """ECBSR (fused=False) or PlainSR (fused=True) with state_dict loaded strictly, in eval mode."""
    model = (PlainSR if fused else ECBSR)(cfg).to(dtype=dtype)  # cast first: loading keeps full precision
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
