"""Atomic outputs: an interrupted write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecbconvert import atomic


def test_interrupted_write_keeps_previous_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_completed_write_replaces(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def _interrupt_after_start(args: list[str], cwd: Path, sig: int, wait_s: float = 6.0) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "ecbconvert", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    time.sleep(wait_s)  # past start-up: imports done, the long step under way
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_training_leaves_previous_checkpoint(tmp_path, sig):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous checkpoint")
    res = _interrupt_after_start(["train", "--scale", "2", "--iters", "100000", "--save-every", "100000",
                                  "-o", str(out)], tmp_path, sig)
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr
    assert out.read_bytes() == b"previous checkpoint"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigint_during_export_leaves_previous_file(tmp_path):
    from ecbconvert.config import ModelConfig

    from .conftest import random_model, write_checkpoint

    ck = write_checkpoint(tmp_path / "m.pt", random_model(ModelConfig(1, 4, 2)))
    out = tmp_path / "m.tflite"
    out.write_bytes(b"previous export")
    res = _interrupt_after_start(["export", str(ck), "--format", "tflite", "--quantize", "int8",
                                  "--calib-count", "400", "-o", str(out)], tmp_path, signal.SIGINT, wait_s=8.0)
    assert res.returncode == 130, (res.returncode, res.stderr[-500:])
    assert "Traceback" not in res.stderr
    assert out.read_bytes() == b"previous export"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
