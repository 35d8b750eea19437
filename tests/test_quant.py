"""INT8 fidelity: range setting, the fake-quant training graph vs the deployed int8 file, QAT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecbconvert import images, quant
from ecbconvert.checkpoint import load, save_fused
from ecbconvert.export.run import export_tflite
from ecbconvert.qat import QATPlain, fake_quant, finetune
from ecbconvert.runtimes import open_runner
from ecbconvert.train import PatchSampler

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "ecbsr_x2_m4c8_prelu.pt"


def test_choose_range_minmax_keeps_extremes():
    hist = np.ones(100, np.int64)
    assert quant.choose_range(hist, -3.0, 5.0, "minmax") == (-3.0, 5.0)


def test_percentile_clips_a_rare_outlier():
    # 1e6 values in [0, 1] and 10 at 100: the 99.999th percentile ignores the outliers.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0, 1, 1_000_000), np.full(10, 100.0)])
    hist = np.histogram(values, quant.BINS, (0.0, 100.0))[0]
    lo, hi = quant.choose_range(hist, 0.0, 100.0, "percentile")
    assert lo == 0.0 and 0.9 < hi < 2.0


def test_mse_range_has_the_known_optimum():
    """Uniform mass on [0, 1] plus rare far outliers: the chosen clip point is the brute-force
    minimiser of clipping error + rounding noise (step²/12 per in-range value), to grid precision,
    and far better than min/max."""
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(0, 1, 200_000), np.full(3, 100.0)])
    hist = np.histogram(values, quant.BINS, (0.0, 100.0))[0]
    lo, hi = quant.choose_range(hist, 0.0, 100.0, "mse")

    def cost(h):
        inside = values <= h
        return np.sum((values - np.minimum(values, h)) ** 2) + inside.sum() * (h / 255) ** 2 / 12

    grid = np.linspace(1.0, 100.0, 991)
    best = grid[np.argmin([cost(h) for h in grid])]
    assert lo == 0.0
    assert abs(hi - best) <= 5.0  # the chooser searches in steps of 5 % of the range
    assert cost(hi) <= 1.05 * cost(best)
    assert cost(hi) < 0.95 * cost(100.0)  # better than keeping min/max


def test_fake_quant_grid():
    x = torch.linspace(-1, 3, 1001)
    y = fake_quant(x, 0.0, 2.55)
    assert float(y.min()) == 0.0 and float(y.max()) == pytest.approx(2.55)
    assert torch.allclose(torch.round(y / 0.01) * 0.01, y, atol=1e-6)


@pytest.mark.slow
def test_fake_quant_graph_matches_the_int8_file(tmp_path):
    """The training graph and the deployed graph agree to within one quantization step."""
    src = load(SAMPLE)
    plain = src.fused_state_dict()
    plain["backbone.1.act.weight"][:2] = torch.tensor([1.7, 2.5], dtype=plain["backbone.1.act.weight"].dtype)  # α > 1 too
    model, _ = finetune(src.config, plain, iters=2, calib_count=4, method="minmax")
    save_fused(tmp_path / "q.pt", src.config, model.plain_state_dict(), source=src, extras=model.extras("minmax"))
    res = export_tflite(load(tmp_path / "q.pt"), tmp_path / "q.tflite", quantize="int8", io="uint8",
                        size=(32, 40), calib_count=4, check=False)
    assert any("kept from quantization-aware" in n for n in res.notes)
    runner = open_runner(res.path)
    x = np.random.default_rng(0).integers(0, 256, (1, 1, 32, 40)).astype(np.float64)
    got = runner.run(x)
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).double().numpy()
    err = np.abs(got - want)  # the output step is 1 (uint8 pixels)
    assert err.mean() < 0.5
    assert (err <= 1.0 + 1e-6).mean() > 0.95


@pytest.mark.slow
def test_qat_lowers_the_quantized_loss():
    src = load(SAMPLE)
    cfg = src.config
    held = PatchSampler(images.bundled_dir("eval"), cfg, 32, seed=99).batch(16)

    def quantized_l1(model: QATPlain) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.l1_loss(model(torch.from_numpy(held[0])), torch.from_numpy(held[1])))

    before = QATPlain(cfg, src.fused_state_dict())
    from ecbconvert import calib

    before.calibrate(list(calib.patches(cfg, calib.lr_images(cfg, None), count=8, size=(96, 96))), "mse")
    after, result = finetune(cfg, src.fused_state_dict(), iters=40, calib_count=8, method="mse", lr=1e-4)
    assert result.iters == 40
    assert quantized_l1(after) < quantized_l1(before)
