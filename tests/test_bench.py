"""bench: record schema, one record per (model, variant, threads), threads applied, --no-xnnpack."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from ecbconvert import checkpoint
from ecbconvert.bench import FIELDS, ops_outside_delegate
from ecbconvert.cli import main
from ecbconvert.export.run import export_onnx, export_tflite
from ecbconvert.runtimes import open_runner

FAST = ["--min-time", "0.05", "--runs", "2", "--warmup", "1", "--input-size", "16x24"]


@pytest.fixture
def artifacts(tmp_path, small_ckpt):
    loaded = checkpoint.load(small_ckpt)
    onnx = export_onnx(loaded, tmp_path / "m.onnx", opset=17, input_size=None, check=False).path
    tfl = export_tflite(loaded, tmp_path / "m.tflite", quantize="none", io="float", size=(16, 24), check=False).path
    return small_ckpt, onnx, tfl


@pytest.mark.slow
def test_bench_json_and_csv_schema(tmp_path, artifacts):
    ckpt, onnx, tfl = artifacts
    res = CliRunner().invoke(main, ["bench", str(ckpt), str(onnx), str(tfl), "--threads", "1,2", *FAST,
                                    "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"cpu", "cores", "versions"} <= set(data["machine"])
    recs = data["records"]
    # checkpoint -> trained + fused; each at 2 thread counts; plus onnx and tflite
    assert len(recs) == (2 + 1 + 1) * 2
    keys = {(r["model"].split("/")[-1], r["variant"], r["threads"]) for r in recs}
    assert len(keys) == len(recs)
    for r in recs:
        for f in FIELDS:
            assert f in r
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["p99_ms"]
        assert r["gmacs_per_s"] > 0 and r["runs"] >= 2 and r["input_size"] == "16x24"
    applied = {(r["backend"], r["threads"]): r["threads_applied"] for r in recs}
    assert applied[("torch", 2)] == 2 and applied[("onnxruntime", 2)] == 2 and applied[("onnxruntime", 1)] == 1
    rows = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert len(rows) == len(recs) and set(FIELDS) == set(rows[0])
    assert "speed-up" in res.output and "CPU:" in res.output


@pytest.mark.slow
def test_no_xnnpack_is_honoured(artifacts):
    _, _, tfl = artifacts
    with_x = open_runner(tfl, xnnpack=True)
    without = open_runner(tfl, xnnpack=False)
    assert ops_outside_delegate(with_x.interp) == []  # everything in XNNPACK
    assert "CONV_2D" in ops_outside_delegate(without.interp)  # built-in kernels only
    assert "no xnnpack" in without.backend


@pytest.mark.slow
def test_profile_reports_op_placement(artifacts):
    _, onnx, tfl = artifacts
    res = CliRunner().invoke(main, ["bench", str(onnx), str(tfl), "--profile", *FAST])
    assert res.exit_code == 0, res.output
    assert "per_op_type_ms" in res.output and "Conv" in res.output
    assert "ops_outside_delegate" in res.output


def test_bench_bad_threads_and_min_time(small_ckpt):
    r = CliRunner().invoke(main, ["bench", str(small_ckpt), "--threads", "0"])
    assert r.exit_code == 2 and "positive" in r.output
    r = CliRunner().invoke(main, ["bench", str(small_ckpt), "--threads", "a,b"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["bench", str(small_ckpt), "--min-time", "0"])
    assert r.exit_code == 2


@pytest.mark.slow
def test_fixed_size_onnx_asked_for_another_size(tmp_path, small_ckpt):
    loaded = checkpoint.load(small_ckpt)
    onnx = export_onnx(loaded, tmp_path / "f.onnx", opset=17, input_size=(8, 8), check=False).path
    r = CliRunner().invoke(main, ["bench", str(onnx), "--input-size", "16x16", "--min-time", "0.01"])
    assert r.exit_code == 3 and "8x8" in r.output
