"""The bad-input matrix: every command × every kind of broken input.

Each case asserts the documented exit code (DESIGN.md §8), a message naming the file, key or flag,
no traceback, and that no output (nor a temporary) was left behind.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecbconvert import checkpoint
from ecbconvert.cli import main
from ecbconvert.config import ModelConfig, config_yaml_text
from ecbconvert.errors import InputError

from .conftest import layout_state, random_model

CFG = ModelConfig(1, 4, 2)


# ------------------------------------------------------------------ broken files


def _sd():
    return layout_state(random_model(CFG), "paper")


def _save(path: Path, obj, yml: bool = True) -> Path:
    torch.save(obj, path)
    if yml:
        path.with_suffix(".yml").write_text(config_yaml_text(CFG))
    return path


def make_missing(d):
    return d / "nope.pt", "no such file"


def make_dir(d):
    (d / "adir.pt").mkdir()
    return d / "adir.pt", "folder"


def make_empty(d):
    (d / "empty.pt").write_bytes(b"")
    return d / "empty.pt", "empty"


def make_truncated(d):
    p = _save(d / "full.pt", _sd())
    data = p.read_bytes()
    (d / "trunc.pt").write_bytes(data[: len(data) // 2])
    (d / "trunc.yml").write_text(config_yaml_text(CFG))
    return d / "trunc.pt", "truncated|corrupt|not a PyTorch"


def make_random(d):
    (d / "rand.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return d / "rand.pt", "not a PyTorch|corrupt"


def make_zip(d):
    with zipfile.ZipFile(d / "z.pt", "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    return d / "z.pt", "not a PyTorch|corrupt|truncated"


class _Evil:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def make_pickle(d):
    ev = _Evil()
    ev.marker = str(d / "MARKER")
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"backbone.0.conv3x3.weight": ev}, f)
    return d / "evil.pt", "run code|pickle"


def make_torch_pickle(d):
    ev = _Evil()
    ev.marker = str(d / "MARKER")
    torch.save({"backbone.0.conv3x3.weight": ev}, d / "evil2.pt")
    return d / "evil2.pt", "run code"


def make_other_model(d):
    return _save(d / "other.pt", {"features.0.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(2)}, False), \
        "backbone"


def make_missing_key(d):
    sd = _sd()
    del sd["backbone.1.conv1x1_sby.k0"]
    return _save(d / "mk.pt", sd), r"backbone\.1\.conv1x1_sby\.k0"


def make_extra_key(d):
    sd = _sd()
    sd["backbone.1.conv1x1_extra.k0"] = torch.zeros(4, 4, 1, 1)
    return _save(d / "xk.pt", sd), r"backbone\.1\.conv1x1_extra\.k0"


def make_shapes(d):
    sd = _sd()
    sd["backbone.1.conv1x1_3x3.k1"] = torch.zeros(4, 7, 3, 3)
    return _save(d / "sh.pt", sd), r"backbone\.1\.conv1x1_3x3\.k1"


def make_nan(d):
    sd = _sd()
    sd["backbone.0.conv3x3.bias"][1] = float("nan")
    return _save(d / "nan.pt", sd), r"backbone\.0\.conv3x3\.bias.*NaN"


def make_inf(d):
    sd = _sd()
    sd["backbone.2.conv1x1_lpl.k0"][0] = float("inf")
    return _save(d / "inf.pt", sd), r"backbone\.2\.conv1x1_lpl\.k0.*Inf"


def make_bad_act(d):
    p = _save(d / "act.pt", _sd(), yml=False)
    p.with_suffix(".yml").write_text("m_ecbsr: 1\nc_ecbsr: 4\nact_type: 'gelu'\nidt_ecbsr: 0\n")
    return p, "gelu"


CKPT_CASES = {f.__name__[5:]: f for f in [make_missing, make_dir, make_empty, make_truncated, make_random, make_zip,
                                           make_pickle, make_torch_pickle, make_other_model, make_missing_key,
                                           make_extra_key, make_shapes, make_nan, make_inf, make_bad_act]}


def corrupt_onnx(d):
    from ecbconvert.export.run import export_onnx

    good = export_onnx(checkpoint.load(_save(d / "g.pt", _sd())), d / "g.onnx", opset=17, input_size=None, check=False)
    data = good.path.read_bytes()
    (d / "bad.onnx").write_bytes(data[: len(data) // 3])
    return d / "bad.onnx"


def corrupt_tflite(d):
    (d / "bad.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + np.random.default_rng(1).bytes(2000))
    return d / "bad.tflite"


def random_tflite(d):
    (d / "rnd.tflite").write_bytes(np.random.default_rng(2).bytes(3000))
    return d / "rnd.tflite"


# ------------------------------------------------------------------ runner


def run(args, cwd: Path):
    """Invoke the CLI; return (exit code, output). Never lets an exception through as a pass."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
    out = res.output
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, out


def assert_clean(d: Path, before: set[str]):
    after = {p.name for p in d.iterdir()}
    new = after - before
    assert not new, f"left behind: {new}"
    assert not (d / "MARKER").exists(), "a pickle ran code"


def error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, out
    return lines[0]


COMMANDS = {
    "fuse": lambda p, d: ["fuse", p, "-o", d / "out.pt"],
    "info": lambda p, d: ["info", p],
    "verify-ref": lambda p, d: ["verify", p, d / "good.pt", "--report", d / "out.json"],
    "verify-cand": lambda p, d: ["verify", d / "good.pt", p, "--report", d / "out.json"],
    "export-onnx": lambda p, d: ["export", p, "--format", "onnx", "-o", d / "out.onnx"],
    "export-tflite": lambda p, d: ["export", p, "--format", "tflite", "-o", d / "out.tflite"],
    "bench": lambda p, d: ["bench", p, "--json", d / "out.json", "--min-time", "0.01"],
    "eval": lambda p, d: ["eval", p, "--json", d / "out.json"],
    "finetune": lambda p, d: ["finetune", p, "--qat", "--iters", "1", "-o", d / "out.pt"],
}


@pytest.mark.parametrize("case", list(CKPT_CASES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_broken_checkpoints(tmp_path, command, case):
    _save(tmp_path / "good.pt", _sd())
    path, pattern = CKPT_CASES[case](tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    code, out = run(COMMANDS[command](path, tmp_path), tmp_path)
    line = error_line(out)
    if case == "missing":
        assert code in (2, 3), out  # Click may answer first for a missing argument path
    else:
        assert code == 3, out
    import re

    assert re.search(pattern, line, re.I), line
    if case != "missing":
        assert path.stem in line, line
    assert_clean(tmp_path, before)


@pytest.mark.parametrize("maker", [corrupt_onnx, corrupt_tflite, random_tflite], ids=lambda f: f.__name__)
@pytest.mark.parametrize("command", ["info", "verify-cand", "bench", "eval"])
def test_broken_exported_files(tmp_path, command, maker):
    _save(tmp_path / "good.pt", _sd())
    path = maker(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    code, out = run(COMMANDS[command](path, tmp_path), tmp_path)
    assert code == 3, out
    assert path.name in error_line(out)
    assert_clean(tmp_path, before)


def test_unknown_extension(tmp_path):
    (tmp_path / "m.h5").write_bytes(b"xx")
    code, out = run(["bench", tmp_path / "m.h5"], tmp_path)
    assert code == 3 and "unknown model type" in error_line(out)


# ------------------------------------------------------------------ folders


def _folder(d: Path, kind: str) -> Path:
    f = d / f"imgs_{kind}"
    f.mkdir()
    if kind == "nonimages":
        (f / "notes.txt").write_text("hello")
        (f / "fake.png").write_bytes(b"not a png")
    elif kind == "missing":
        f.rmdir()
    return f


FOLDER_COMMANDS = {
    "export-calib": lambda ck, f, d: ["export", ck, "--format", "tflite", "--quantize", "int8", "--calib", f,
                                      "--input-size", "8x8", "-o", d / "out.tflite"],
    "eval": lambda ck, f, d: ["eval", ck, "--images", f, "--json", d / "out.json"],
    "train": lambda ck, f, d: ["train", "--scale", "2", "--images", f, "--iters", "1", "-o", d / "out.pt"],
    "verify-images": lambda ck, f, d: ["verify", ck, ck, "--images", f],
}


@pytest.mark.parametrize("kind", ["empty", "nonimages", "missing"])
@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_bad_image_folders(tmp_path, command, kind):
    ck = _save(tmp_path / "good.pt", _sd())
    folder = _folder(tmp_path, kind)
    before = {p.name for p in tmp_path.iterdir()}
    code, out = run(FOLDER_COMMANDS[command](ck, folder, tmp_path), tmp_path)
    if command == "verify-images":  # a float candidate is gated on outputs, not images: the folder is not read
        assert code == 0, out
        return
    assert code == 3, out
    line = error_line(out)
    assert folder.name in line, line
    assert_clean(tmp_path, before)


def test_non_images_are_named_in_warnings(tmp_path):
    ck = _save(tmp_path / "good.pt", _sd())
    folder = _folder(tmp_path, "nonimages")
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "ok.png")
    code, out = run(["eval", ck, "--images", folder], tmp_path)
    assert code == 0, out
    assert "ok.png" in out


# ------------------------------------------------------------------ flags and sizes


@pytest.mark.parametrize("args,flag", [
    (["export", "{ck}", "--format", "tflite", "--input-size", "0x5"], "--input-size"),
    (["export", "{ck}", "--format", "tflite", "--input-size", "12"], "--input-size"),
    (["export", "{ck}", "--format", "tflite", "--input-size", "-3x4"], "--input-size"),
    (["verify", "{ck}", "{ck}", "--input-size", "axb"], "--input-size"),
    (["bench", "{ck}", "--input-size", "0x0"], "--input-size"),
    (["bench", "{ck}", "--threads", "-1"], "--threads"),
    (["bench", "{ck}", "--min-time", "-1"], "--min-time"),
    (["export", "{ck}", "--format", "coreml"], "--format"),
    (["export", "{ck}", "--format", "tflite", "--quantize", "int4"], "--quantize"),
    (["export", "{ck}", "--format", "tflite", "--calib-count", "0"], "--calib-count"),
    (["train", "--scale", "2", "--iters", "0", "-o", "x.pt"], "--iters"),
    (["train", "--scale", "5", "-o", "x.pt"], "--scale"),
    (["fuse", "{ck}", "--act", "gelu"], "--act"),
])
def test_bad_flags_are_usage_errors(tmp_path, args, flag):
    ck = _save(tmp_path / "good.pt", _sd())
    before = {p.name for p in tmp_path.iterdir()}
    code, out = run([a.format(ck=ck) for a in args], tmp_path)
    assert code == 2, out
    assert flag in error_line(out) or flag.lstrip("-") in error_line(out), out
    assert_clean(tmp_path, before)


@pytest.mark.parametrize("args,needle", [
    (["export", "{ck}", "--format", "tflite", "--io", "uint8"], "--io uint8"),
    (["export", "{ck}", "--format", "onnx", "--quantize", "int8"], "--quantize"),
    (["export", "{ck}", "--format", "tflite", "--calib", "{d}"], "--calib"),
])
def test_conflicting_flags(tmp_path, args, needle):
    ck = _save(tmp_path / "good.pt", _sd())
    before = {p.name for p in tmp_path.iterdir()}
    code, out = run([a.format(ck=ck, d=tmp_path) for a in args], tmp_path)
    assert code == 2 and needle in error_line(out), out
    assert_clean(tmp_path, before)


def test_huge_input_size_is_refused_up_front(tmp_path):
    ck = _save(tmp_path / "good.pt", _sd())
    code, out = run(["verify", ck, ck, "--input-size", "300000x300000"], tmp_path)
    assert code == 3 and "GiB" in error_line(out) and "--input-size" in error_line(out)


# ------------------------------------------------------------------ outputs


@pytest.mark.parametrize("command", ["fuse", "export-onnx", "train", "bench-json", "eval-json", "fuse-report"])
@pytest.mark.parametrize("where", ["missing-folder", "read-only", "file-as-folder", "same-as-input"])
def test_bad_output_paths(tmp_path, command, where):
    ck = _save(tmp_path / "good.pt", _sd())
    (tmp_path / "afile").write_text("x")
    target = {"missing-folder": tmp_path / "no" / "such" / "out.x", "read-only": Path("/proc/ecbconvert_out.x"),
              "file-as-folder": tmp_path / "afile" / "out.x", "same-as-input": ck}[where]
    args = {
        "fuse": ["fuse", ck, "-o", target],
        "fuse-report": ["fuse", ck, "-o", tmp_path / "f.pt", "--report", target],
        "export-onnx": ["export", ck, "--format", "onnx", "-o", target],
        "train": ["train", "--scale", "2", "--iters", "1", "--patch", "8", "-o", target],
        "bench-json": ["bench", ck, "--min-time", "0.01", "--runs", "1", "--input-size", "8x8", "--json", target],
        "eval-json": ["eval", ck, "--json", target],
    }[command]
    before = {p.name for p in tmp_path.iterdir()}
    original = ck.read_bytes()
    code, out = run(args, tmp_path)
    if where == "same-as-input" and command in ("bench-json", "eval-json", "fuse-report", "train"):
        # not an input of these commands in the sense of being overwritten mid-read: refused or written whole
        pass
    else:
        assert code == 3, out
        assert str(target.name) in error_line(out) or str(target.parent) in error_line(out), out
    assert ck.read_bytes() == original or command in ("bench-json", "eval-json", "fuse-report", "train")
    leftovers = {p.name for p in tmp_path.iterdir()} - before - {"f.pt"}
    assert not any(n.endswith(".tmp") for n in leftovers), leftovers


def test_existing_output_replaced_only_when_complete(tmp_path):
    ck = _save(tmp_path / "good.pt", _sd())
    out = tmp_path / "fused.pt"
    out.write_bytes(b"previous")
    code, _ = run(["fuse", ck, "-o", out], tmp_path)
    assert code == 0 and checkpoint.load(out).fused


# ------------------------------------------------------------------ fuzzed readers

_tensors = st.builds(lambda shape: torch.zeros(shape), st.lists(st.integers(0, 4), min_size=0, max_size=4))
_values = st.recursive(st.one_of(_tensors, st.integers(), st.text(max_size=5), st.none(), st.floats()),
                       lambda inner: st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=8)
_keys = st.one_of(st.text(max_size=30), st.sampled_from(["backbone.0.conv3x3.weight", "module.backbone.1.act.weight",
                                                         "head.0.conv3x3.bias", "params", "params_ema", "format",
                                                         "state_dict", "body.0.conv1x1_3x3.k0", "tail.0.x"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(obj=st.one_of(st.dictionaries(_keys, _values, max_size=6), _values, st.lists(_tensors, max_size=3)))
def test_fuzzed_checkpoint_reader(tmp_path, obj):
    path = tmp_path / "fuzz.pt"
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())
    try:
        checkpoint.load(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=600), suffix=st.sampled_from([".onnx", ".tflite", ".pt"]),
       header=st.sampled_from([b"", b"\x18\x00\x00\x00TFL3", b"PK\x03\x04", b"\x08\x07\x12"]))
def test_fuzzed_file_readers(tmp_path, data, suffix, header):
    from ecbconvert.runtimes import open_runner

    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(header + data)
    try:
        open_runner(path)
    except InputError as e:
        assert path.name in str(e) and "\n" not in str(e)
