"""Kernel algebra for re-parameterization: small pure functions on (weight, bias) pairs.

Every function takes and returns torch tensors, never mutates its inputs, keeps the dtype it is
given (float64 is how the gates prove exactness), and is differentiable, so the trainer can run the
fused kernel on the fly. Weights are laid out as torch conv weights: (out, in, kh, kw).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Pair = tuple[Tensor, Tensor]

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def pad_kernel(weight: Tensor, k: int) -> Tensor:
    """Zero-pad a smaller odd kernel (e.g. 1x1) to k x k, centred: same output under padding k//2."""
    p = (k - weight.shape[-1]) // 2
    return F.pad(weight, (p, p, p, p))


def compose_1x1_kxk(k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor) -> Pair:
    """1x1 conv (k0, b0) followed by an unpadded kxk conv (k1, b1), as one kxk conv.

    Exact with zero padding at the borders only when the 1x1 output was padded with b0
    (see DESIGN.md §2): then every tap of k1 sees k0·x + b0 or, outside, 0·x + b0.
    """
    weight = torch.einsum("omhw,mi->oihw", k1, k0[:, :, 0, 0])
    bias = b1 + torch.einsum("omhw,m->o", k1, b0)
    return weight, bias


def depthwise_to_dense(kernel: Tensor) -> Tensor:
    """A depthwise kernel (C, 1, k, k) as the equivalent dense kernel (C, C, k, k)."""
    c = kernel.shape[0]
    eye = torch.eye(c, dtype=kernel.dtype, device=kernel.device)
    return eye[:, :, None, None] * kernel[:, 0][:, None]


def scaled_mask(scale: Tensor, mask: Tensor) -> Tensor:
    """The depthwise kernel of an edge branch: scale[c] · mask[c] (shapes (C,1,1,1) and (C,1,3,3))."""
    return scale * mask


def identity(channels: int, k: int = 3, *, dtype=torch.float32, device=None) -> Pair:
    """A kxk conv that returns its input: a centre tap of 1 on the diagonal, zero bias."""
    weight = torch.zeros(channels, channels, k, k, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    weight[idx, idx, k // 2, k // 2] = 1.0
    return weight, torch.zeros(channels, dtype=dtype, device=device)


def add(*pairs: Pair) -> Pair:
    """Parallel branches with the same padding, summed: kernels add and biases add."""
    weights, biases = zip(*pairs, strict=False)
    return torch.stack(weights).sum(0), torch.stack(biases).sum(0)


def fold_batchnorm(
    weight: Tensor,
    bias: Tensor | None,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float = 1e-5,
) -> Pair:
    """conv (weight, bias) followed by eval-mode BatchNorm2d, as one conv."""
    std = torch.sqrt(running_var + eps)
    factor = gamma / std
    if bias is None:
        bias = torch.zeros_like(running_mean)
    return weight * factor[:, None, None, None], beta + (bias - running_mean) * factor


def prelu_slopes_at_most_one(w: Tensor, b: Tensor, alpha: Tensor, w_next: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """An equivalent (conv, PReLU, next conv) whose PReLU slopes are all ≤ 1.

    For a channel with α > 1: PReLU_α(y) = -α · PReLU_{1/α}(-y). So negate the channel's conv
    row and bias, use slope 1/α, and fold the factor -α into the next conv's input column.
    Exact in real arithmetic; int8 export uses it so that PReLU is always the two-term form
    y + relu((α-1)·y), which needs α ≤ 1.
    """
    flip = alpha > 1
    sign = torch.where(flip, -torch.ones_like(alpha), torch.ones_like(alpha))
    new_alpha = torch.where(flip, 1.0 / alpha, alpha)
    col = torch.where(flip, -alpha, torch.ones_like(alpha))
    return w * sign[:, None, None, None], b * sign, new_alpha, w_next * col[None, :, None, None]
