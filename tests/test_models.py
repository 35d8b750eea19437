"""Bundled images, the task metric, the trainer, and the trained sample models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ecbconvert import checkpoint, images
from ecbconvert.cli import main
from ecbconvert.config import ModelConfig
from ecbconvert.evaluate import bicubic_baseline, evaluate
from ecbconvert.runtimes import open_runner
from ecbconvert.train import train

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
REQUIRED = ["ecbsr_x2_m4c8_prelu.pt", "ecbsr_x2_m4c16_prelu.pt", "ecbsr_x4_m4c16_prelu.pt"]


def test_bundled_images_are_split_and_licensed():
    train_dir, eval_dir = images.bundled_dir("train"), images.bundled_dir("eval")
    t = {p.name for p in train_dir.iterdir()}
    e = {p.name for p in eval_dir.iterdir()}
    assert len(t) >= 5 and len(e) >= 3 and not (t & e)
    licences = (train_dir.parent / "LICENSES.md").read_text()
    for name in t | e:
        assert name in licences
    total = sum(p.stat().st_size for p in list(train_dir.iterdir()) + list(eval_dir.iterdir()))
    assert total < 5e6


def test_psnr_hand_computed():
    a = np.zeros((8, 8))
    b = np.zeros((8, 8))
    b[0, 0] = 16.0  # MSE = 256/64 = 4
    assert images.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 4))
    assert images.psnr(a, b, border=1) == math.inf  # the differing pixel is shaved
    assert images.psnr(a, a) == math.inf


def test_ssim_properties():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32))
    assert images.ssim(x, x) == pytest.approx(1.0)
    assert images.ssim(x, x + 10) < 1.0
    assert images.ssim(x, rng.uniform(0, 255, (32, 32))) < 0.2


def test_rgb_to_y_matches_bt601():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    y = images.rgb_to_y(rgb)
    assert y[0, 0] == pytest.approx(235.0) and y[0, 1] == pytest.approx(16.0)
    assert y[0, 2] == pytest.approx(16 + 65.481)


def test_training_lowers_the_loss(tmp_path):
    cfg = ModelConfig(1, 4, 2)
    losses: list[float] = []
    out = tmp_path / "t.pt"
    res = train(cfg, out=out, iters=30, patch=16, batch=4, seed=1, on_step=lambda s, loss: losses.append(loss))
    assert res.iters_done == 30 and out.exists() and out.with_suffix(".yml").exists()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # the written checkpoint is the paper's layout and fuses with no flags
    loaded = checkpoint.load(out)
    assert loaded.layout == "paper" and loaded.config == cfg


def test_training_is_deterministic(tmp_path):
    cfg = ModelConfig(0, 3, 2)
    for name in ("a.pt", "b.pt"):
        train(cfg, out=tmp_path / name, iters=5, patch=8, batch=2, seed=7, threads=1)
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_cli_small_images_error(tmp_path):
    from PIL import Image

    d = tmp_path / "tiny"
    d.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "a.png")
    r = CliRunner().invoke(main, ["train", "--scale", "2", "--images", str(d), "--patch", "48", "--iters", "1",
                                  "-o", str(tmp_path / "x.pt")])
    assert r.exit_code == 3 and "--patch" in r.output
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("name", REQUIRED)
def test_sample_model_loads_fuses_exactly_and_beats_bicubic(name):
    path = SAMPLES / name
    loaded = checkpoint.load(path)  # no flags: the YAML beside it says act and idt
    assert loaded.layout == "paper" and loaded.config.act_type == "prelu"
    x = torch.rand(1, 1, 13, 17, dtype=torch.float64) * 255
    trained = loaded.build(torch.float64)
    from ecbconvert.arch import fuse

    ref = trained(x)
    assert float((fuse(trained)(x) - ref).abs().max() / ref.abs().max()) <= 1e-10
    rgb = images.read_image(images.bundled_dir("eval") / "chelsea.png")
    pair = images.make_pair("chelsea.png", rgb, loaded.config.scale, 1)
    model = evaluate(open_runner(path), [pair])
    base = bicubic_baseline([pair], loaded.config.scale)
    assert model.psnr > base.psnr + 0.3, (model.psnr, base.psnr)


def test_sample_models_are_documented():
    doc = (SAMPLES / "README.md").read_text()
    for name in REQUIRED:
        assert name in doc
        assert (SAMPLES / name).with_suffix(".yml").exists()


def test_eval_cli_with_save(tmp_path):
    path = SAMPLES / "ecbsr_x2_m4c8_prelu.pt"
    out = tmp_path / "crops"
    r = CliRunner().invoke(main, ["eval", str(path), "--save", str(out), "--json", str(tmp_path / "e.json"),
                                  "--scale", "2"])
    assert r.exit_code == 0, r.output
    assert "bicubic" in r.output and "per image" in r.output
    assert len(list(out.glob("*.png"))) == 3
    r = CliRunner().invoke(main, ["eval", str(path), "--scale", "4"])
    assert r.exit_code == 3 and "--scale 4" in r.output
