"""`make demo`: the whole path on a bundled sample model, with one summary table at the end.

fuse -> verify -> export ONNX, TFLite fp32 and full int8 (uint8 I/O) -> eval -> bench.
Every step is the library call the CLI makes; a failed gate stops the demo with exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--min-time", type=float, default=1.5)
    args = ap.parse_args()

    from ecbconvert import images
    from ecbconvert.bench import machine, run_bench
    from ecbconvert.checkpoint import load
    from ecbconvert.errors import EcbError
    from ecbconvert.evaluate import bicubic_baseline, evaluate
    from ecbconvert.export.run import export_onnx, export_tflite
    from ecbconvert.fusion import fuse_checkpoint, render_fuse
    from ecbconvert.runtimes import open_runner
    from ecbconvert.tables import table

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        step = lambda s: print(f"\n== {s}", flush=True)  # noqa: E731
        step(f"fuse {args.checkpoint}")
        fused = fuse_checkpoint(args.checkpoint, output=args.out / "model_fused.pt")
        print(render_fuse(fused))
        if not fused.passed:
            return 1
        loaded = load(args.checkpoint)
        step("export ONNX (fp32)")
        onnx = export_onnx(loaded, args.out / "model.onnx", opset=17, input_size=None)
        step("export TFLite fp32")
        fp32 = export_tflite(loaded, args.out / "model_fp32.tflite", quantize="none", io="float", size=(270, 480))
        step("export TFLite full int8, uint8 I/O, calibrated on the bundled training photographs")
        int8 = export_tflite(loaded, args.out / "model_int8_u8io.tflite", quantize="int8", io="uint8",
                             size=(270, 480), calib_count=64)
        exports = [onnx, fp32, int8]
        for e in exports:
            print(f"{e.path.name}: {len(e.ops)} ops ({' '.join(sorted(set(e.ops)))}), verified: {e.report.passed}")
        step("eval on the held-out photographs (PSNR on Y, DESIGN.md §6)")
        pairs = images.make_pairs(None, loaded.config.scale, loaded.config.colors)
        base = bicubic_baseline(pairs, loaded.config.scale)
        paths = [args.checkpoint, fused.output] + [e.path for e in exports]
        scores = {p: evaluate(open_runner(p, threads=2), pairs) for p in paths}
        step("bench at 270x480, 1 thread")
        records = {(r.model, r.variant): r for r in run_bench(paths, threads=[1], size=(270, 480),
                                                               min_time=args.min_time)}
        info = machine()
        print(f"CPU: {info['cpu']} ({info['cores']} cores)")
        rows = [["bicubic", "", "", f"{base.psnr:.3f}", "", ""]]
        worst = {fused.output: max(c.diff.max_rel for c in fused.checks)}
        drops = {e.path: e.report for e in exports}
        for p in paths:
            variant = "trained" if p == args.checkpoint else open_runner(p).variant
            rec = records[(str(p), variant)]
            rep = drops.get(p)
            if p == args.checkpoint:
                err = "reference"
            elif rep is not None and rep.quality is not None:
                err = f"PSNR drop {rep.quality.drop:.3f} dB"
            elif rep is not None:
                err = f"max rel {max(c.diff.max_rel for c in rep.checks):.1e}"
            else:
                err = f"max rel {worst[p]:.1e}"
            fused_ms = records[(str(paths[1]), "fused")].median_ms
            rows.append([f"{p.name} [{variant}]", f"{p.stat().st_size / 1024:.1f} KiB", err,
                         f"{scores[p].psnr:.3f}", f"{rec.median_ms:.1f}", f"{fused_ms / rec.median_ms:.2f}×"])
        print()
        print(table(rows, ["artifact", "size", "vs trained", "PSNR vs HR dB", "median ms", "speed vs fused torch"]))
        failed = [e.path.name for e in exports if not e.report.passed]
        if failed:
            print(f"gate failed for: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    except EcbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
