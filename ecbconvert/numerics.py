"""Compare two model outputs: max abs / relative error, PSNR, border ring vs interior; gate verdicts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Diff:
    """How far candidate is from reference on one input (NCHW arrays in the model's value range)."""

    input: str
    max_abs: float
    max_rel: float  # max |cand - ref| / max |ref|
    border_max_abs: float  # outer `border` output pixels (one LR pixel: where padding bugs show)
    interior_max_abs: float
    psnr_db: float  # between the two outputs, data range = the model's value range
    ref_peak: float

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _jsonable(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def diff(name: str, ref: np.ndarray, cand: np.ndarray, *, value_range: float, border: int) -> Diff:
    ref = np.asarray(ref, np.float64)
    cand = np.asarray(cand, np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    err = np.abs(cand - ref)
    interior = err[..., border:-border, border:-border] if min(err.shape[-2:]) > 2 * border else err[..., :0, :0]
    ring = err.copy()
    if interior.size:
        ring[..., border:-border, border:-border] = 0.0
    peak = float(np.abs(ref).max()) or 1.0
    mse = float(np.mean((cand - ref) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(value_range**2 / mse)
    return Diff(name, float(err.max()), float(err.max()) / peak, float(ring.max()),
                float(interior.max()) if interior.size else 0.0, psnr, peak)


@dataclass(frozen=True)
class Tolerance:
    """Pass when max_abs ≤ atol + rtol·max|ref| and the PSNR between outputs ≥ min_psnr."""

    atol: float = 0.0
    rtol: float | None = 1e-5  # None: not checked (fp16 is gated on PSNR alone)
    min_psnr: float | None = None

    def check(self, d: Diff) -> tuple[bool, str]:
        ok, parts = True, []
        if self.rtol is not None or self.min_psnr is None:
            limit = self.atol + (self.rtol or 0.0) * d.ref_peak
            ok = d.max_abs <= limit
            parts.append(f"max abs {d.max_abs:.3g} {'≤' if ok else '>'} {limit:.3g} "
                         f"(atol {self.atol:g} + rtol {self.rtol or 0:g}·{d.ref_peak:.4g})")
        if self.min_psnr is not None:
            ok_p = d.psnr_db >= self.min_psnr
            parts.append(f"PSNR {fmt_db(d.psnr_db)} dB {'≥' if ok_p else '<'} {self.min_psnr:g} dB")
            ok = ok and ok_p
        return ok, "; ".join(parts)


def fmt_db(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.2f}"
