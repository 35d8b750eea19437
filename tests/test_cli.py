"""fuse / verify / info through Click's CliRunner, and the start-up weight of `ecbconvert --help`."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from click.testing import CliRunner

from ecbconvert.cli import main
from ecbconvert.config import ModelConfig

from .conftest import random_model, write_checkpoint


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_imports_neither_torch_nor_tensorflow():
    code = ("import sys; from ecbconvert.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'ai_edge_litert', 'onnx') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_every_subcommand_help_is_light():
    for cmd in ("fuse", "verify", "info", "export", "bench", "eval", "train", "finetune"):
        code = (f"import sys; from ecbconvert.cli import main\ntry:\n    main(['{cmd}', '--help'])\n"
                "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'LIGHT')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().endswith("LIGHT"), (cmd, out)


def test_fuse_writes_a_verified_file_and_report(tmp_path, small_ckpt):
    report = tmp_path / "report.json"
    res = invoke("fuse", small_ckpt, "--report", report)
    assert res.exit_code == 0, res.output
    out = small_ckpt.with_name("small_fused.pt")
    assert out.exists()
    assert "convs per layer" in res.output and "✓ float64" in res.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["trained"]["convs_per_layer"] == 9 and data["fused"]["convs_per_layer"] == 1
    f64 = [c for c in data["checks"] if c["stage"].startswith("float64")]
    assert f64 and all(c["max_rel"] <= 1e-10 for c in f64)
    assert all("border_max_abs" in c and "interior_max_abs" in c for c in data["checks"])
    assert any("photo" in c["stage"] for c in data["checks"])


def test_fuse_plain_layout_loads_in_plainsr(tmp_path, small_ckpt, small_cfg):
    from ecbconvert.arch import PlainSR

    out = tmp_path / "plain.pt"
    assert invoke("fuse", small_ckpt, "-o", out, "--layout", "plain").exit_code == 0
    PlainSR(small_cfg).load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_fuse_gate_fails_on_a_broken_fusion(tmp_path, small_ckpt, monkeypatch):
    """A wrong fusion rule (zero-padding the intermediate's bias) must fail the gate with exit 1."""
    from ecbconvert import reparam

    real = reparam.compose_1x1_kxk

    def wrong(k0, b0, k1, b1):
        return real(k0, torch.zeros_like(b0), k1, b1)

    monkeypatch.setattr(reparam, "compose_1x1_kxk", wrong)
    res = CliRunner().invoke(main, ["fuse", str(small_ckpt), "-o", str(tmp_path / "bad.pt")])
    assert res.exit_code == 1
    assert (tmp_path / "bad.pt").exists()  # kept for inspection
    assert "✗ float64" in res.output


def test_verify_checkpoint_against_its_fused_file(tmp_path, small_ckpt):
    fused = tmp_path / "f.pt"
    invoke("fuse", small_ckpt, "-o", fused)
    report = tmp_path / "v.json"
    res = invoke("verify", small_ckpt, fused, "--input-size", "20x30", "--report", report)
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    assert json.loads(report.read_text())["passed"]


def test_verify_fails_on_a_different_model(tmp_path, small_cfg):
    a = write_checkpoint(tmp_path / "a.pt", random_model(small_cfg, seed=1))
    b = write_checkpoint(tmp_path / "b.pt", random_model(small_cfg, seed=2))
    res = CliRunner().invoke(main, ["verify", str(a), str(b), "--input-size", "16x16"])
    assert res.exit_code == 1
    assert "gate failed" in res.output


def test_verify_tolerance_flags_apply(tmp_path, small_cfg):
    a = write_checkpoint(tmp_path / "a.pt", random_model(small_cfg, seed=1))
    b = write_checkpoint(tmp_path / "b.pt", random_model(small_cfg, seed=2))
    res = invoke("verify", a, b, "--input-size", "8x8", "--atol", "1e12")
    assert res.exit_code == 0, res.output


def test_info_json(small_ckpt):
    res = invoke("info", small_ckpt, "--json")
    assert res.exit_code == 0
    d = json.loads(res.output)
    for key in ("layout", "module_nums", "channel_nums", "scale", "colors", "act_type", "with_idt",
                "value_range", "parameters", "macs_per_output_mpixel"):
        assert key in d
    assert (d["module_nums"], d["channel_nums"], d["scale"], d["colors"]) == (2, 8, 2, 1)
    assert d["layout"] == "paper"
    cfg = ModelConfig(2, 8, 2)
    assert d["fused_macs_per_output_mpixel"] == cfg.macs_per_lr_pixel() * 1e6 / 4


def test_info_text(small_ckpt):
    res = invoke("info", small_ckpt)
    assert res.exit_code == 0 and "channel_nums: 8" in res.output
