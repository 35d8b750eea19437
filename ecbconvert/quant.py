"""Activation range setting for full-integer quantization (filled in by the INT8 fidelity work)."""

from __future__ import annotations

CALIB_METHODS = ("minmax", "percentile", "mse")


def activation_ranges(cfg, layers, patches, *, method: str):
    raise NotImplementedError(method)
