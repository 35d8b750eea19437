"""Export flows: fused weights -> file (atomically) -> self-verification against the trained model."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, atomic
from ..checkpoint import Loaded
from ..errors import UsageError
from ..runtimes import OnnxRunner, TFLiteRunner, TorchRunner
from ..verify import Report, verify
from .deploy import deploy_layers, slopes_at_most_one

CHECK_SIZE = (96, 96)  # LR size of the float checks for files without a fixed size


@dataclass
class ExportResult:
    path: Path
    format: str
    variant: str
    ops: list[str]
    size_bytes: int
    report: Report | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "variant": self.variant, "ops": self.ops,
                "size_bytes": self.size_bytes, "notes": self.notes,
                "verification": None if self.report is None else self.report.to_dict()}


def _provenance(loaded: Loaded) -> dict:
    return {"tool": "ecbconvert", "tool_version": __version__, "source": loaded.path.name,
            "source_sha256": loaded.sha256}


def reference_runner(loaded: Loaded) -> TorchRunner:
    """The trained graph (or the fused file, if that is all there is) in float64: the truth."""
    return TorchRunner(loaded, threads=1, dtype="float64")


def export_onnx(loaded: Loaded, out: Path, *, opset: int, input_size: tuple[int, int] | None,
                check: bool = True, max_drop: float = 0.3, eval_dir=None) -> ExportResult:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from .onnx import build_onnx, op_types, simplify

    atomic.check_output_path(out, inputs=(loaded.path,))
    layers = deploy_layers(loaded.config, loaded.fused_state_dict())
    model = build_onnx(loaded.config, layers, opset=opset, input_size=input_size, meta=_provenance(loaded))
    notes = []
    simplified = simplify(model)
    if simplified is not None:
        # Keep onnxsim's graph only if it computes the same as ours.
        x = np.random.default_rng(0).uniform(0, loaded.config.value_range,
                                             (1, loaded.config.colors) + (input_size or (17, 23))).astype(np.float32)
        run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]  # noqa: E731
        if np.array_equal(run(model), run(simplified)):
            model = simplified
            notes.append("onnxsim: simplified graph verified and kept")
        else:
            notes.append("onnxsim: simplified graph differed and was dropped")
    data = model.SerializeToString()
    atomic.write_bytes(out, data)
    report = None
    if check:
        cand = OnnxRunner(out, threads=1)
        report = verify(reference_runner(loaded), cand, size=input_size or CHECK_SIZE, tol=None,
                        max_drop=max_drop, eval_dir=eval_dir)
    return ExportResult(out, "onnx", "fp32", op_types(onnx.load_from_string(data)), len(data), report, notes)


def export_tflite(loaded: Loaded, out: Path, *, quantize: str, io: str, size: tuple[int, int],
                  calib_dir: Path | None = None, calib_count: int = 64, calib_method: str = "mse",
                  check: bool = True, max_drop: float = 0.3, eval_dir=None,
                  progress: Callable[[int], object] | None = None, tol=None) -> ExportResult:
    from .. import calib
    from .tflite import convert, op_list

    if io != "float" and quantize != "int8":
        raise UsageError(f"--io {io} needs --quantize int8 (other modes keep float input and output)")
    atomic.check_output_path(out, inputs=(loaded.path,))
    cfg = loaded.config
    cfg.check_memory(*size)
    plain = loaded.fused_state_dict()
    if quantize in ("int8", "int16x8"):
        plain = slopes_at_most_one(cfg, plain)  # PReLU as two terms XNNPACK runs in int8 (tflite.py)
    layers = deploy_layers(cfg, plain)
    notes: list[str] = []
    patches = None
    if quantize in ("int8", "int16x8"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lrs = calib.lr_images(cfg, calib_dir)
        notes += [str(w.message) for w in caught]
        if calib_dir is not None:
            notes.append(f"calibrated on {len(lrs)} image(s) from {calib_dir} "
                         f"({'converted to Y' if cfg.colors == 1 else 'RGB'})")
        bar = progress(calib_count) if progress else None
        try:
            patches = list(calib.patches(cfg, lrs, count=calib_count, size=size,
                                         on_item=(lambda: bar.update(1)) if bar is not None else None))
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    fixed = loaded.extras.get("qat", {}).get("ranges") if quantize == "int8" else None
    if fixed:
        notes.append(f"activation ranges: kept from quantization-aware fine-tuning ({len(fixed)} tensors); "
                     "the rest by calibration")
    elif quantize == "int8":
        notes.append(f"activation ranges: {calib_method} over {calib_count} calibration patches")
    data = convert(cfg, layers, quantize=quantize, io=io, size=size, calib=patches, calib_method=calib_method,
                   fixed_ranges=fixed, meta=_provenance(loaded))
    atomic.write_bytes(out, data)
    report = None
    if check:
        cand = TFLiteRunner(out, threads=1)
        report = verify(reference_runner(loaded), cand, size=size, tol=tol, max_drop=max_drop, eval_dir=eval_dir)
    variant = "fp32" if quantize == "none" else quantize
    return ExportResult(out, "tflite", variant, op_list(data), len(data), report, notes)


def default_output(loaded: Loaded, fmt: str, quantize: str, io: str) -> Path:
    stem = loaded.path.stem.removesuffix("_fused")
    if fmt == "onnx":
        return loaded.path.with_name(f"{stem}.onnx")
    tag = {"none": "fp32"}.get(quantize, quantize) + ("_u8io" if io == "uint8" else "_i8io" if io == "int8" else "")
    return loaded.path.with_name(f"{stem}_{tag}.tflite")


def dump_json(path: Path, obj) -> None:
    atomic.check_output_path(path)
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

