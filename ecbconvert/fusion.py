"""The `fuse` and `info` flows: load, fold, prove the fold exact, write, describe."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from . import atomic
from .checkpoint import Loaded, load, save_fused
from .config import ModelConfig
from .numerics import Tolerance, fmt_db
from .tables import table
from .verify import Check, check_outputs, test_inputs

FLOAT64_RTOL = 1e-10
FLOAT32_RTOL = 1e-5


def trained_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """(convolutions per layer, parameters, MACs per LR pixel) of the five-branch training graph."""
    params = macs = 0
    for i, o in cfg.layer_channels:
        mid = int(o * cfg.depth_multiplier)
        params += 9 * i * o + o  # conv3x3
        params += i * mid + mid + 9 * mid * o + o  # 1x1 -> 3x3
        params += 3 * (i * o + o + o + o)  # three edge branches: k0, b0, scale, bias (masks are frozen)
        macs += 9 * i * o + i * mid + 9 * mid * o + 3 * (i * o + 9 * o)
    n = len(cfg.layer_channels)
    params += (n - 1) * cfg.channel_nums if cfg.act_type == "prelu" else 0
    return 9, params, macs  # 9 convs per layer: 3x3, 1x1+3x3, 3 x (1x1 + depthwise 3x3)


def fused_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    params = sum(9 * i * o + o for i, o in cfg.layer_channels)
    n = len(cfg.layer_channels)
    params += (n - 1) * cfg.channel_nums if cfg.act_type == "prelu" else 0
    return 1, params, cfg.macs_per_lr_pixel()


@dataclass
class FuseResult:
    source: Loaded
    output: Path
    layout: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.stage}: {c.why}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        cfg = self.source.config
        t, f = trained_counts(cfg), fused_counts(cfg)
        return {"source": str(self.source.path), "output": str(self.output), "layout": self.layout,
                "source_layout": self.source.layout, "config": cfg.to_dict(), "passed": self.passed,
                "trained": {"convs_per_layer": t[0], "params": t[1], "macs_per_output_mpixel": t[2] * 1e6 / cfg.scale**2},
                "fused": {"convs_per_layer": f[0], "params": f[1], "macs_per_output_mpixel": f[2] * 1e6 / cfg.scale**2},
                "checks": [c.to_dict() for c in self.checks], "failures": self.failures()}


def fuse_checkpoint(path: Path, *, output: Path | None = None, layout: str = "ecbconvert",
                    load_kwargs: dict | None = None, check_sizes=((37, 53), (96, 96))) -> FuseResult:
    """Fuse a trained checkpoint, write it atomically, and check it in float64 and float32."""
    import torch

    from .runtimes import TorchRunner

    src = load(path, **(load_kwargs or {}))
    out = Path(output) if output is not None else src.path.with_name(f"{src.path.stem}_fused.pt")
    atomic.check_output_path(out, inputs=(src.path,))
    plain_sd = src.fused_state_dict(torch.float64)
    save_fused(out, src.config, plain_sd, source=src, layout=layout)

    result = FuseResult(src, out, layout)
    threads = torch.get_num_threads()
    reference = TorchRunner(src, threads=threads, dtype="float64")
    # The fused weights computed once above; float32 rounds them exactly as the written file does.
    fused = replace(src, fused=True, state_dict=plain_sd)
    fused64 = TorchRunner(fused, threads=threads, dtype="float64")
    fused32 = TorchRunner(fused, threads=threads, dtype="float32")
    for size in check_sizes:
        inputs = test_inputs(src.config, size, n_random=1, photo=size == check_sizes[-1])
        result.checks += check_outputs(reference, fused64, inputs, Tolerance(rtol=FLOAT64_RTOL), label="float64 ")
        result.checks += check_outputs(reference, fused32, inputs, Tolerance(rtol=FLOAT32_RTOL), label="float32 ")
    return result


def render_fuse(result: FuseResult) -> str:
    cfg = result.source.config
    t, f = trained_counts(cfg), fused_counts(cfg)
    mp = 1e6 / cfg.scale**2
    worst32 = max((c for c in result.checks if c.stage.startswith("float32")), key=lambda c: c.diff.max_rel)
    worst32_psnr = min(c.diff.psnr_db for c in result.checks if c.stage.startswith("float32"))
    worst64 = max((c for c in result.checks if c.stage.startswith("float64")), key=lambda c: c.diff.max_rel)
    rows = [
        ["convs per layer", t[0], f[0], ""],
        ["parameters", f"{t[1]:,}", f"{f[1]:,}", f"{f[1] / t[1]:.2f}×"],
        ["MACs per output Mpixel", f"{t[2] * mp / 1e9:.3f} G", f"{f[2] * mp / 1e9:.3f} G", f"{f[2] / t[2]:.2f}×"],
        ["max rel error float64", "", f"{worst64.diff.max_rel:.2e}", f"≤ {FLOAT64_RTOL:g}"],
        ["max rel error float32", "", f"{worst32.diff.max_rel:.2e}", f"≤ {FLOAT32_RTOL:g}"],
        ["max abs error float32", "", f"{worst32.diff.max_abs:.2e}", ""],
        ["PSNR trained vs fused (f32)", "", f"{fmt_db(worst32_psnr)} dB", ""],
    ]
    lines = [f"{result.source.path} ({result.source.layout}): {cfg.name}, with_idt={cfg.with_idt}, "
             f"value range {cfg.value_range:g}"]
    lines += [f"note: {n}" for n in result.source.notes]
    lines += [table(rows, ["", "trained", "fused", "ratio / gate"]), "checks (border = outer "
              f"{cfg.scale} output px, interior = the rest):"]
    for c in result.checks:
        d = c.diff
        lines.append(f"  {'✓' if c.passed else '✗'} {c.stage:<36} rel {d.max_rel:.2e}  border {d.border_max_abs:.2e}"
                     f"  interior {d.interior_max_abs:.2e}")
    lines.append(f"wrote {result.output} ({result.layout} layout){'' if result.passed else ' — CHECK FAILED'}")
    return "\n".join(lines)


def describe(path: Path, *, load_kwargs: dict | None = None) -> dict:
    """The `info` record of a checkpoint, or of an exported .onnx / .tflite file."""
    path = Path(path)
    if path.suffix.lower() in (".onnx", ".tflite"):
        from .runtimes import open_runner

        r = open_runner(path)
        cfg = r.config
        layout, fused = f"{r.format} ({r.variant})", True
    else:
        loaded = load(path, **(load_kwargs or {}))
        cfg, layout, fused = loaded.config, loaded.layout, loaded.fused
    counts = fused_counts(cfg) if fused else trained_counts(cfg)
    return {
        "path": str(path),
        "layout": layout,
        "fused": fused,
        "module_nums": cfg.module_nums,
        "channel_nums": cfg.channel_nums,
        "scale": cfg.scale,
        "colors": cfg.colors,
        "act_type": cfg.act_type,
        "with_idt": cfg.with_idt,
        "depth_multiplier": cfg.depth_multiplier,
        "value_range": cfg.value_range,
        "parameters": counts[1],
        "macs_per_output_mpixel": counts[2] * 1e6 / cfg.scale**2,
        "fused_macs_per_output_mpixel": cfg.macs_per_output_megapixel(),
    }
