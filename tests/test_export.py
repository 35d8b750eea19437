"""ONNX and TFLite export with the real converter, onnxruntime and LiteRT: graphs, numerics, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ecbconvert import checkpoint
from ecbconvert.cli import main
from ecbconvert.config import ModelConfig
from ecbconvert.export.run import export_onnx, export_tflite
from ecbconvert.runtimes import open_runner

from .conftest import random_model, write_checkpoint

SIZE = (24, 32)


def ckpt(tmp_path, cfg, seed=0, name="m.pt", tame=False):
    """A random model; tame=True scales its branches down so the output stays near the pixel range,
    as a trained model's does (PSNR-based gates only mean something then)."""
    import torch

    model = random_model(cfg, seed)
    with torch.no_grad():
        if cfg.act_type == "prelu":  # trained PReLU slopes live in [0, 1)
            for block in model.backbone[:-1]:
                block.act.weight.uniform_(0.05, 0.6)
        if tame:
            for name_, p in model.named_parameters():
                if not name_.endswith(("mask", "act.weight")):
                    p.mul_(0.3)
    return checkpoint.load(write_checkpoint(tmp_path / name, model))


ONNX_CASES = [
    ModelConfig(2, 8, 2, colors=1, act_type="prelu"),
    ModelConfig(1, 6, 3, colors=3, act_type="relu"),
    ModelConfig(1, 4, 4, colors=1, act_type="linear"),
    ModelConfig(0, 5, 4, colors=3, act_type="prelu", with_idt=True),
    ModelConfig(1, 4, 2, colors=1, act_type="softplus"),
]


@pytest.mark.parametrize("cfg", ONNX_CASES, ids=lambda c: f"{c.name}_c{c.colors}")
def test_onnx_graph_numerics_and_determinism(tmp_path, cfg):
    loaded = ckpt(tmp_path, cfg)
    a = export_onnx(loaded, tmp_path / "a.onnx", opset=17, input_size=None)
    export_onnx(loaded, tmp_path / "b.onnx", opset=17, input_size=None, check=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    n = cfg.module_nums + 2
    assert a.ops.count("Conv") == n
    act = {"prelu": "PRelu", "relu": "Relu", "softplus": "Softplus"}.get(cfg.act_type)
    if act:
        assert a.ops.count(act) == n - 1
    assert a.ops.count("Add") == 1 and a.ops.count("DepthToSpace") == 1
    assert a.ops.count("Tile") == (1 if cfg.colors == 3 else 0)
    assert set(a.ops) <= {"Conv", "PRelu", "Relu", "Softplus", "Add", "Tile", "DepthToSpace"}
    assert a.report.passed, a.report.failures()
    assert max(c.diff.max_rel for c in a.report.checks) <= 1e-4
    # dynamic H and W: any size runs
    runner = open_runner(tmp_path / "a.onnx")
    assert runner.fixed_size is None
    ref = open_runner(loaded.path, dtype="float64")
    x = np.random.default_rng(1).uniform(0, 255, (1, cfg.colors, 7, 11))
    got, want = runner.run(x), ref.run(x)
    assert got.shape == (1, cfg.colors, 7 * cfg.scale, 11 * cfg.scale)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_onnx_fixed_size(tmp_path):
    loaded = ckpt(tmp_path, ModelConfig(1, 4, 2))
    res = export_onnx(loaded, tmp_path / "f.onnx", opset=13, input_size=(16, 20))
    assert res.report.passed
    assert open_runner(tmp_path / "f.onnx").fixed_size == (16, 20)


def _tfl(tmp_path, loaded, quantize, io="float", name=None, **kw):
    out = tmp_path / (name or f"{quantize}_{io}.tflite")
    return export_tflite(loaded, out, quantize=quantize, io=io, size=SIZE, calib_count=4, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [ModelConfig(2, 8, 2, act_type="prelu"), ModelConfig(1, 6, 3, colors=3, act_type="relu"),
                                 ModelConfig(1, 4, 4, act_type="linear")], ids=lambda c: f"{c.name}_c{c.colors}")
def test_tflite_fp32_graph_and_numerics(tmp_path, cfg):
    loaded = ckpt(tmp_path, cfg)
    res = _tfl(tmp_path, loaded, "none")
    n = cfg.module_nums + 2
    expected = []
    for d in range(n):
        expected.append("CONV_2D")
        if cfg.act_type == "prelu" and d < n - 1:
            expected.append("PRELU")
    if cfg.colors == 3:
        expected.insert(1, "TILE")  # the residual's tile is scheduled early; order among independents varies
    assert sorted(res.ops) == sorted(expected + ["ADD", "DEPTH_TO_SPACE"])
    assert "TRANSPOSE" not in res.ops and res.ops[-1] == "DEPTH_TO_SPACE"
    assert res.report.passed, res.report.failures()
    assert max(c.diff.max_rel for c in res.report.checks) <= 1e-4
    r = open_runner(res.path)
    assert r.fixed_size == SIZE and r.details["input_dtype"] == "float32"


@pytest.mark.slow
def test_tflite_fp16_and_dynamic(tmp_path):
    loaded = ckpt(tmp_path, ModelConfig(2, 8, 2), tame=True)
    fp16 = _tfl(tmp_path, loaded, "fp16")
    assert "DEQUANTIZE" in fp16.ops and fp16.ops.count("CONV_2D") == 4
    assert fp16.report.passed and min(c.diff.psnr_db for c in fp16.report.checks) >= 50
    dyn = _tfl(tmp_path, loaded, "dynamic")
    assert dyn.report.quality is not None  # quantized: gated on PSNR vs HR
    assert dyn.size_bytes < fp16.size_bytes * 1.5


@pytest.mark.slow
@pytest.mark.parametrize("value_range", [255.0, 1.0])
def test_tflite_int8_uint8_io(tmp_path, value_range):
    cfg = ModelConfig(2, 8, 2, value_range=value_range)
    loaded = ckpt(tmp_path, cfg, tame=True)
    res = _tfl(tmp_path, loaded, "int8", io="uint8", max_drop=100.0)
    # every PReLU as y + depthwise_relu(y): all of it runs in XNNPACK's int8 kernels
    assert "PRELU" not in res.ops and "MAXIMUM" not in res.ops and "MUL" not in res.ops
    assert res.ops.count("CONV_2D") == 4 and res.ops.count("DEPTH_TO_SPACE") == 1
    r = open_runner(res.path)
    assert r.details["input_dtype"] == "uint8" and r.details["output_dtype"] == "uint8"
    for q in (r._in["quantization"], r._out["quantization"]):
        assert q[1] == 0
        assert q[0] == pytest.approx(1.0 if value_range == 255 else 1 / 255, rel=1e-6)
    from ecbconvert.bench import ops_outside_delegate

    assert set(ops_outside_delegate(r.interp)) <= {"QUANTIZE"}
    # quantized output equals the runner's own dequantization of raw bytes
    x = np.random.default_rng(0).integers(0, 256, (1, 1) + SIZE).astype(np.float64) * value_range / 255
    y = r.run(x)
    assert y.min() >= 0 and y.max() <= value_range * (1 + 1e-6)  # clipped to the pixel range


@pytest.mark.slow
def test_tflite_int8_float_io_and_int16x8(tmp_path):
    loaded = ckpt(tmp_path, ModelConfig(1, 6, 2, act_type="relu"), tame=True)
    i8 = _tfl(tmp_path, loaded, "int8", max_drop=100.0)
    r = open_runner(i8.path)
    assert r.details["input_dtype"] == "float32" and r.variant == "int8"
    i16 = _tfl(tmp_path, loaded, "int16x8", max_drop=100.0)
    assert open_runner(i16.path).variant == "int16x8"
    # 16-bit activations are far closer to the float model than 8-bit ones
    assert i16.report.checks[0].diff.psnr_db > i8.report.checks[0].diff.psnr_db


@pytest.mark.slow
def test_tflite_exports_are_deterministic(tmp_path):
    loaded = ckpt(tmp_path, ModelConfig(1, 4, 2))
    for q in ("none", "int8"):
        a = _tfl(tmp_path, loaded, q, name=f"a_{q}.tflite", check=False)
        b = _tfl(tmp_path, loaded, q, name=f"b_{q}.tflite", check=False)
        assert a.path.read_bytes() == b.path.read_bytes(), q


@pytest.mark.slow
def test_verify_cli_on_onnx_and_tflite_candidates(tmp_path):
    loaded = ckpt(tmp_path, ModelConfig(1, 4, 2))
    other = ckpt(tmp_path, ModelConfig(1, 4, 2), seed=5, name="other.pt")
    onnx_path = tmp_path / "m.onnx"
    export_onnx(loaded, onnx_path, opset=17, input_size=None, check=False)
    tfl = _tfl(tmp_path, loaded, "none", check=False).path
    runner = CliRunner()
    for cand in (onnx_path, tfl):
        res = runner.invoke(main, ["verify", str(loaded.path), str(cand), "--report", str(tmp_path / "r.json")])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "r.json").read_text())["passed"]
        bad = runner.invoke(main, ["verify", str(other.path), str(cand)])
        assert bad.exit_code == 1, bad.output


@pytest.mark.slow
def test_export_cli_end_to_end(tmp_path):
    loaded = ckpt(tmp_path, ModelConfig(1, 4, 2))
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(loaded.path), "--format", "tflite", "--quantize", "int8", "--io", "uint8",
                               "--input-size", "24x32", "--calib-count", "3", "--max-psnr-drop", "100",
                               "--report", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "m_int8_u8io.tflite"
    assert out.exists()
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["variant"] == "int8" and rep["verification"]["quality"]["images"] == 3
    # a gate that cannot pass: exit 1, file kept
    res = runner.invoke(main, ["export", str(loaded.path), "--format", "tflite", "--quantize", "int8",
                               "--input-size", "24x32", "--calib-count", "3", "--max-psnr-drop", "-1",
                               "-o", str(tmp_path / "strict.tflite")])
    assert res.exit_code == 1 and (tmp_path / "strict.tflite").exists()
    assert "gate failed" in res.output
