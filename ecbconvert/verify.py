"""The equivalence gates: candidate vs reference on random and real inputs, or PSNR vs HR.

Float candidates are gated on output error (max abs ≤ atol + rtol·max|ref|, or PSNR between the
outputs for fp16); quantized candidates on the task metric: PSNR against the HR ground truth on
real images, reference vs candidate, and the drop. Every check is reported, pass or fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import images
from .config import ModelConfig
from .errors import InputError
from .evaluate import evaluate
from .numerics import Diff, Tolerance, diff
from .runtimes import Runner

PHOTO = "chelsea.png"  # the bundled CC0 photograph the float checks always include


def default_tolerance(variant: str) -> Tolerance | None:
    """None means: gate on the PSNR drop vs HR instead (quantized files)."""
    if variant in ("trained", "fused"):
        return Tolerance(rtol=1e-5)
    if variant == "fp32":
        return Tolerance(rtol=1e-4)
    if variant == "fp16":
        return Tolerance(rtol=None, min_psnr=50.0)
    return None


def test_inputs(cfg: ModelConfig, size: tuple[int, int], *, seed: int = 0, n_random: int = 2,
                photo: bool = True) -> list[tuple[str, np.ndarray]]:
    """NCHW float64 inputs in the model's value range: uniform noise, then a real photograph's LR."""
    rng = np.random.default_rng(seed)
    h, w = size
    vr = cfg.value_range
    out = [(f"random{i} {h}x{w}", rng.uniform(0.0, vr, (1, cfg.colors, h, w))) for i in range(n_random)]
    if photo:
        pair = images.make_pair(PHOTO, images.read_image(images.bundled_dir("eval") / PHOTO), cfg.scale, cfg.colors)
        lr = pair.lr
        y0, x0 = max(0, (lr.shape[0] - h) // 2), max(0, (lr.shape[1] - w) // 2)
        crop = lr[y0 : y0 + h, x0 : x0 + w]
        out.append((f"photo {PHOTO} {crop.shape[0]}x{crop.shape[1]}", images.to_nchw(crop, vr).astype(np.float64)))
    return out


@dataclass
class Check:
    stage: str
    diff: Diff
    passed: bool
    why: str

    def to_dict(self) -> dict:
        return {"stage": self.stage, "passed": self.passed, "why": self.why, **self.diff.to_dict()}


@dataclass
class Quality:
    """PSNR vs HR (dB, mean over images) of reference and candidate, and the drop."""

    reference_psnr: float
    candidate_psnr: float
    max_drop: float
    images: int

    @property
    def drop(self) -> float:
        return self.reference_psnr - self.candidate_psnr

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def to_dict(self) -> dict:
        return {"reference_psnr": self.reference_psnr, "candidate_psnr": self.candidate_psnr,
                "drop_db": self.drop, "max_drop_db": self.max_drop, "images": self.images, "passed": self.passed}


@dataclass
class Report:
    reference: str
    candidate: str
    variant: str
    checks: list[Check] = field(default_factory=list)
    quality: Quality | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and (self.quality is None or self.quality.passed)

    def failures(self) -> list[str]:
        out = [f"{c.stage}: {c.why}" for c in self.checks if not c.passed]
        if self.quality is not None and not self.quality.passed:
            q = self.quality
            out.append(f"PSNR vs HR dropped {q.drop:.3f} dB (> {q.max_drop:g} dB): "
                       f"{q.reference_psnr:.3f} → {q.candidate_psnr:.3f} dB")
        return out

    def to_dict(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "variant": self.variant,
                "passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "quality": None if self.quality is None else self.quality.to_dict(),
                "failures": self.failures()}


def check_outputs(reference: Runner, candidate: Runner, inputs, tol: Tolerance, *, label: str = "") -> list[Check]:
    cfg = reference.config
    checks = []
    for name, x in inputs:
        d = diff(name, reference.run(x), candidate.run(x), value_range=cfg.value_range, border=cfg.scale)
        ok, why = tol.check(d)
        checks.append(Check(f"{label}{name}".strip(), d, ok, why))
    return checks


def check_quality(reference: Runner, candidate: Runner, pairs, max_drop: float) -> Quality:
    ref = evaluate(reference, pairs)
    cand = evaluate(candidate, pairs)
    return Quality(ref.psnr, cand.psnr, max_drop, len(pairs))


def ensure_compatible(reference: Runner, candidate: Runner) -> None:
    a, b = reference.config, candidate.config
    for key in ("scale", "colors"):
        if getattr(a, key) != getattr(b, key):
            raise InputError(f"{candidate.path}: {key} {getattr(b, key)} differs from the reference "
                             f"{reference.path} ({getattr(a, key)}); they are not the same model")
    if a.value_range != b.value_range:
        raise InputError(f"{candidate.path}: value range {b.value_range:g} differs from the reference's "
                         f"{a.value_range:g}; pass --value-range to the reference")


def verify(reference: Runner, candidate: Runner, *, size: tuple[int, int], tol: Tolerance | None,
           max_drop: float, eval_dir=None, seed: int = 0) -> Report:
    """Gate candidate against reference: output error for float files, PSNR drop for quantized ones."""
    ensure_compatible(reference, candidate)
    reference.config.check_memory(*size)
    report = Report(str(reference.path), str(candidate.path), candidate.variant)
    cfg = reference.config
    tol = tol if tol is not None else default_tolerance(candidate.variant)
    inputs = test_inputs(cfg, size, seed=seed)
    if tol is not None:
        report.checks = check_outputs(reference, candidate, inputs, tol)
    else:
        # Quantized: output error is reported (on the photo) but the gate is the task metric.
        report.checks = check_outputs(reference, candidate, inputs[-1:], Tolerance(atol=float("inf")))
        for c in report.checks:
            c.why = "reported only: quantized files are gated on PSNR vs HR"
        pairs = images.make_pairs(eval_dir, cfg.scale, cfg.colors, what="evaluation image folder")
        report.quality = check_quality(reference, candidate, pairs, max_drop)
    return report
