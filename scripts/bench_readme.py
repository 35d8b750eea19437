"""`make bench`: the standard comparison on the sample model, written into the README.

Trained vs fused PyTorch, ONNX Runtime fp32, LiteRT fp32 / fp16 / full int8 (uint8 I/O), at
1 and 2 threads, 270x480 LR input, all measured side by side in this one run. A 64-channel plain
conv stack (M4C64, random weights: speed does not depend on them) is run as this machine's
practical fp32 ceiling, so the fp32 file's GMAC/s can be read as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    args = ap.parse_args()

    import torch

    from ecbconvert.arch import ECBSR, fuse
    from ecbconvert.bench import machine, render, run_bench
    from ecbconvert.checkpoint import load, save_fused
    from ecbconvert.config import ModelConfig
    from ecbconvert.export.run import export_onnx, export_tflite
    from ecbconvert.tables import table

    args.out.mkdir(parents=True, exist_ok=True)
    size = (270, 480)
    threads = [int(t) for t in args.threads.split(",")]
    loaded = load(args.checkpoint)
    files = [
        export_onnx(loaded, args.out / "model.onnx", opset=17, input_size=None, check=False).path,
        export_tflite(loaded, args.out / "model_fp32.tflite", quantize="none", io="float", size=size, check=False).path,
        export_tflite(loaded, args.out / "model_fp16.tflite", quantize="fp16", io="float", size=size, check=False).path,
        export_tflite(loaded, args.out / "model_int8_u8io.tflite", quantize="int8", io="uint8", size=size,
                      check=False).path,
    ]
    # The ceiling: a 64-channel plain stack, fp32 TFLite.
    torch.manual_seed(0)
    wide_cfg = ModelConfig(4, 64, loaded.config.scale)
    wide_path = args.out / "ceiling_m4c64_fused.pt"
    save_fused(wide_path, wide_cfg, fuse(ECBSR(wide_cfg).eval()).state_dict(), source=None)
    wide = export_tflite(load(wide_path), args.out / "ceiling_m4c64_fp32.tflite", quantize="none", io="float",
                         size=size, check=False).path

    records = run_bench([args.checkpoint, *files, wide], threads=threads, size=size, min_time=args.min_time)
    info = machine()
    text = render(records, info)
    print(text)
    (args.out / "bench.json").write_text(json.dumps({"machine": info, "records": [r.to_dict() for r in records]},
                                                    indent=2))

    def rec(name_part, variant, t):
        return next(r for r in records if name_part in Path(r.model).name and r.variant == variant and r.threads == t)

    rows = []
    for t in threads:
        trained, fused_r = rec(args.checkpoint.name, "trained", t), rec(args.checkpoint.name, "fused", t)
        fp32, int8 = rec("model_fp32", "fp32", t), rec("model_int8", "int8", t)
        ceil = rec("ceiling", "fp32", t)
        rows.append([t, f"{trained.median_ms / fused_r.median_ms:.2f}×", f"{fp32.median_ms / int8.median_ms:.2f}×",
                     f"{2 * fp32.gmacs_per_s:.0f} / {2 * ceil.gmacs_per_s:.0f} = {fp32.gmacs_per_s / ceil.gmacs_per_s:.2f}"])
    ratios = table(rows, ["threads", "fused vs trained torch", "LiteRT int8 vs fp32", "fp32 GFLOP/s vs C64 ceiling"])
    print("\n" + ratios)
    if args.readme.exists():
        block = (f"{BEGIN}\n```\n$ make bench   # {args.checkpoint.name}, LR 270x480\n{text}\n\n{ratios}\n```\n{END}")
        readme = args.readme.read_text()
        if BEGIN in readme:
            readme = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
            args.readme.write_text(readme)
            print(f"\nwrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
