"""Every fusion rule against running its unfused pieces, in float64, border pixels separately."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecbconvert import reparam
from ecbconvert.arch import ECB, SeqConv1x1Conv3x3, SeqConv1x1Mask, fuse
from ecbconvert.config import ModelConfig

from .conftest import random_model

TOL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor, region=slice(None)) -> float:
    return float((a - b)[..., region, :].abs().max() / b.abs().max())


def border_interior(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Max abs error on the one-pixel ring and inside it, relative to max |b|."""
    a, b = a.detach(), b.detach()
    err = (a - b).abs()
    peak = float(b.abs().max())
    inner = err[..., 1:-1, 1:-1]
    ring = err.clone()
    ring[..., 1:-1, 1:-1] = 0
    return float(ring.max()) / peak, (float(inner.max()) / peak if inner.numel() else 0.0)


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("k", [3, 5])
def test_pad_kernel_keeps_output(k):
    w, b, x = rand(4, 3, 1, 1), rand(4), rand(2, 3, 7, 6)
    ref = F.conv2d(x, w, b)
    got = F.conv2d(x, reparam.pad_kernel(w, k), b, padding=k // 2)
    ring, inner = border_interior(got, ref)
    assert ring <= TOL and inner <= TOL, (ring, inner)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (5, 7), (9, 4)])
@pytest.mark.parametrize("inp,mid,out", [(1, 4, 3), (3, 8, 8), (6, 2, 5)])
def test_compose_1x1_3x3_with_bias_padding(shape, inp, mid, out):
    torch.manual_seed(inp * 100 + mid)
    k0, b0, k1, b1 = rand(mid, inp, 1, 1), rand(mid), rand(out, mid, 3, 3), rand(out)
    x = rand(2, inp, *shape)
    y0 = F.conv2d(x, k0, b0)
    padded = F.pad(y0, (1, 1, 1, 1))
    padded[:, :, 0, :] = padded[:, :, -1, :] = b0.view(1, -1, 1)
    padded[:, :, :, 0] = padded[:, :, :, -1] = b0.view(1, -1, 1)
    ref = F.conv2d(padded, k1, b1)
    w, b = reparam.compose_1x1_kxk(k0, b0, k1, b1)
    got = F.conv2d(x, w, b, padding=1)
    ring, inner = border_interior(got, ref)
    assert ring <= TOL, f"border ring error {ring:.3g}"
    assert inner <= TOL, f"interior error {inner:.3g}"


def test_zero_padding_the_intermediate_is_wrong_on_the_ring():
    """The subtlety this tool exists for: zero-padding the 1x1 output breaks the border only."""
    k0, b0, k1, b1 = rand(4, 2, 1, 1), rand(4) + 3.0, rand(3, 4, 3, 3), rand(3)
    x = rand(1, 2, 8, 8)
    naive = F.conv2d(F.pad(F.conv2d(x, k0, b0), (1, 1, 1, 1)), k1, b1)
    w, b = reparam.compose_1x1_kxk(k0, b0, k1, b1)
    ring, inner = border_interior(F.conv2d(x, w, b, padding=1), naive)
    assert inner <= TOL
    assert ring > 1e-3


@pytest.mark.parametrize("c", [1, 3, 8])
def test_depthwise_to_dense(c):
    dw, x = rand(c, 1, 3, 3), rand(1, c, 6, 5)
    ref = F.conv2d(x, dw, padding=1, groups=c)
    got = F.conv2d(x, reparam.depthwise_to_dense(dw), padding=1)
    ring, inner = border_interior(got, ref)
    assert ring <= TOL and inner <= TOL


@pytest.mark.parametrize("kind", ["sbx", "sby", "lpl"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (6, 6)])
def test_mask_branch(kind, shape):
    branch = SeqConv1x1Mask(3, 5, kind).double()
    with torch.no_grad():
        branch.scale.copy_(rand(5, 1, 1, 1))
        branch.bias.copy_(rand(5))
        branch.b0.copy_(rand(5) * 2)
    x = rand(2, 3, *shape)
    w, b = branch.fused()
    ring, inner = border_interior(F.conv2d(x, w, b, padding=1), branch(x))
    assert ring <= TOL and inner <= TOL, (ring, inner)


def test_masks_are_the_published_filters():
    expected = {"sbx": reparam.SOBEL_X, "sby": reparam.SOBEL_Y, "lpl": reparam.LAPLACIAN}
    for kind, mask in expected.items():
        assert torch.equal(SeqConv1x1Mask(2, 3, kind).mask[1, 0], torch.tensor(mask, dtype=torch.float32))


def test_identity():
    x = rand(2, 4, 5, 3)
    w, b = reparam.identity(4, 3, dtype=torch.float64)
    assert torch.equal(F.conv2d(x, w, b, padding=1), x)


def test_add_parallel():
    x = rand(1, 3, 6, 6)
    pairs = [(rand(4, 3, 3, 3), rand(4)) for _ in range(3)]
    ref = sum(F.conv2d(x, w, b, padding=1) for w, b in pairs)
    w, b = reparam.add(*pairs)
    ring, inner = border_interior(F.conv2d(x, w, b, padding=1), ref)
    assert ring <= TOL and inner <= TOL


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm(with_bias):
    conv = torch.nn.Conv2d(3, 6, 3, padding=1, bias=with_bias).double()
    bn = torch.nn.BatchNorm2d(6).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(rand(6))
        bn.running_var.copy_(rand(6).abs() + 0.1)
        bn.weight.copy_(rand(6))
        bn.bias.copy_(rand(6))
    x = rand(2, 3, 5, 7)
    w, b = reparam.fold_batchnorm(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    ring, inner = border_interior(F.conv2d(x, w, b, padding=1), bn(conv(x)))
    assert ring <= TOL and inner <= TOL


def test_seq_1x1_3x3_branch_module():
    branch = SeqConv1x1Conv3x3(3, 4, 8).double()
    x = rand(1, 3, 5, 5)
    w, b = branch.fused()
    ring, inner = border_interior(F.conv2d(x, w, b, padding=1), branch(x))
    assert ring <= TOL and inner <= TOL


@pytest.mark.parametrize("with_idt", [False, True])
@pytest.mark.parametrize("act", ["prelu", "relu", "linear", "softplus", "rrelu"])
def test_ecb_block(with_idt, act):
    block = ECB(6, 6, 2.0, act, with_idt).double().eval()
    x = rand(2, 6, 4, 7)
    ring, inner = border_interior(block.forward_fused(x), block(x))
    assert ring <= TOL and inner <= TOL


def test_fused_forward_has_the_same_gradients():
    """The trainer's fast path (on-the-fly fused kernel) trains exactly what the branches would."""
    model = random_model(ModelConfig(1, 4, 2), seed=3)
    x = rand(2, 1, 6, 6)
    grads = []
    for fused in (False, True):
        model.zero_grad()
        model(x, fused=fused).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12), name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(0, 3),
    c=st.integers(1, 10),
    scale=st.sampled_from([2, 3, 4]),
    colors=st.sampled_from([1, 3]),
    act=st.sampled_from(["prelu", "relu", "rrelu", "softplus", "linear"]),
    with_idt=st.booleans(),
    dm=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_network_fusion_is_exact(m, c, scale, colors, act, with_idt, dm, h, w, seed):
    cfg = ModelConfig(m, c, scale, colors, act, with_idt, dm)
    if cfg.mid_channels < 1:
        return
    model = random_model(cfg, seed)
    x = torch.rand(1, colors, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 255
    ref = model(x)
    got = fuse(model)(x)
    assert got.dtype == torch.float64
    err = (got - ref).abs()
    peak = float(ref.abs().max()) or 1.0
    s = scale
    ring = err.clone()
    ring[..., s:-s, s:-s] = 0
    assert float(ring.max()) / peak <= TOL, f"border ring rel error {float(ring.max()) / peak:.3g}"
    assert float(err.max()) / peak <= TOL, f"rel error {float(err.max()) / peak:.3g}"


def test_colors3_residual_is_nearest_upsampling():
    cfg = ModelConfig(1, 4, 3, colors=3, act_type="linear")
    model = random_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = rand(1, 3, 4, 5)
    nearest = F.interpolate(x, scale_factor=3, mode="nearest")
    assert torch.equal(model(x), nearest)
    assert torch.equal(fuse(model)(x), nearest)


def test_fuse_returns_new_module_and_leaves_model_untouched():
    model = random_model(ModelConfig(1, 4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = fuse(model)
    assert plain is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_prelu_slopes_at_most_one_keeps_the_function():
    conv1 = torch.nn.Conv2d(3, 5, 3, padding=1).double()
    conv2 = torch.nn.Conv2d(5, 2, 3, padding=1).double()
    alpha = torch.tensor([0.2, 1.5, -0.3, 3.0, 1.0], dtype=torch.float64)
    x = rand(2, 3, 6, 7)

    def net(w1, b1, a, w2):
        y = F.conv2d(x, w1, b1, padding=1)
        return F.conv2d(F.prelu(y, a), w2, conv2.bias, padding=1)

    with torch.no_grad():
        ref = net(conv1.weight, conv1.bias, alpha, conv2.weight)
        w1, b1, a, w2 = reparam.prelu_slopes_at_most_one(conv1.weight, conv1.bias, alpha, conv2.weight)
        got = net(w1, b1, a, w2)
    assert float(a.max()) <= 1.0
    ring, inner = border_interior(got, ref)
    assert ring <= TOL and inner <= TOL
