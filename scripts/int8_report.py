"""The INT8 trade-off table on the sample models: PSNR drop vs fp32 and latency ratio.

For each checkpoint: TFLite fp32, full int8 (uint8 I/O) with each --calib-method, and int16x8;
PSNR vs HR on the held-out photographs (eval protocol) and LiteRT median latency at 270x480,
one thread, all measured side by side in this one run. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("build/int8"))
    ap.add_argument("--methods", default="minmax,percentile,mse")
    ap.add_argument("--int16", action="store_true", help="also int16x8 (slow to run: reference kernels)")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--qat-iters", type=int, default=0, help="also QAT (finetune --qat) with this many iterations")
    args = ap.parse_args()

    from ecbconvert import images
    from ecbconvert.bench import run_bench
    from ecbconvert.checkpoint import load
    from ecbconvert.evaluate import evaluate
    from ecbconvert.export.run import export_tflite
    from ecbconvert.runtimes import open_runner

    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["| model | file | PSNR vs HR dB | drop vs fp32 dB | median ms | speed-up vs fp32 |", "|---|---|---|---|---|---|"]
    for ck in args.checkpoints:
        loaded = load(ck)
        pairs = images.make_pairs(None, loaded.config.scale, loaded.config.colors)
        stem = ck.stem
        variants = [("fp32", dict(quantize="none", io="float"))]
        variants += [(f"int8 {m}", dict(quantize="int8", io="uint8", calib_method=m)) for m in args.methods.split(",")]
        if args.int16:
            variants.append(("int16x8", dict(quantize="int16x8", io="float")))
        files = []
        for name, kw in variants:
            path = args.out / f"{stem}_{name.replace(' ', '_')}.tflite"
            export_tflite(loaded, path, size=(270, 480), check=False, **kw)
            files.append((name, path))
        if args.qat_iters:
            import time

            from ecbconvert.checkpoint import save_fused
            from ecbconvert.qat import finetune

            t0 = time.perf_counter()
            qmodel, _ = finetune(loaded.config, loaded.fused_state_dict(), iters=args.qat_iters, method="mse")
            qat_path = args.out / f"{stem}_qat.pt"
            save_fused(qat_path, loaded.config, qmodel.plain_state_dict(), source=loaded, extras=qmodel.extras("mse"))
            print(f"{stem}: QAT {args.qat_iters} iterations in {time.perf_counter() - t0:.0f} s; fp32 of the QAT model: "
                  f"{evaluate(open_runner(qat_path), pairs).psnr:.3f} dB", flush=True)
            path = args.out / f"{stem}_int8_qat.tflite"
            export_tflite(load(qat_path), path, size=(270, 480), check=False, quantize="int8", io="uint8")
            files.append((f"int8 QAT ({args.qat_iters} it)", path))
        ref_psnr = evaluate(open_runner(ck), pairs).psnr
        recs = {r.model: r for r in run_bench([p for _, p in files], threads=[1], size=(270, 480),
                                               min_time=args.min_time)}
        fp32_ms = recs[str(files[0][1])].median_ms
        for name, path in files:
            psnr = evaluate(open_runner(path, threads=2), pairs).psnr
            ms = recs[str(path)].median_ms
            rows.append(f"| {stem} | {name} | {psnr:.3f} | {ref_psnr - psnr:+.3f} | {ms:.1f} | {fp32_ms / ms:.2f}× |")
        print("\n".join(rows[-len(files):]), flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
