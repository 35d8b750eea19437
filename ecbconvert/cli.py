"""The `ecbconvert` command line: thin Click commands over the library.

Start-up stays light: torch, TensorFlow and the runtimes are imported inside commands only.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .config import ACTIVATIONS
from .errors import EcbError

DEFAULT_TFLITE_SIZE = (270, 480)


# ---------------------------------------------------------------- parameter types


class SizeType(click.ParamType):
    """HxW with positive integers, e.g. 270x480."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("×", "x").split("x")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not HxW with integers (e.g. 270x480)", param, ctx)
        if h <= 0 or w <= 0:
            self.fail(f"{value!r}: height and width must be positive", param, ctx)
        return h, w


class ThreadsType(click.ParamType):
    """A comma-separated list of positive integers, e.g. 1,2,4."""

    name = "N[,N…]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            out = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers (e.g. 1,2,4)", param, ctx)
        if not out or any(t <= 0 for t in out):
            self.fail(f"{value!r}: thread counts must be positive integers", param, ctx)
        return out


SIZE = SizeType()
THREADS = ThreadsType()
EXISTING_FILE = click.Path(path_type=Path, dir_okay=True, exists=False)
IMAGE_DIR = click.Path(path_type=Path, file_okay=True, exists=False)


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be > 0")
    return value


# ---------------------------------------------------------------- shared plumbing


def handle_errors(fn):
    """Turn library errors into one line on stderr and the documented exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # SIGINT and SIGTERM (Ctrl-C, a CI timeout, `kill`) unwind as KeyboardInterrupt, so temporary
        # files are removed: installed explicitly, since a parent may have left SIGINT ignored.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGINT, _raise_interrupt)
        try:
            return fn(*args, **kwargs)
        except EcbError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was left behind", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory; use a smaller --input-size", err=True)
            sys.exit(3)

    return wrapper


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def loader_options(fn):
    """Options for what a checkpoint's shapes cannot say (DESIGN.md §4)."""
    fn = click.option("--params-key", type=click.Choice(["params", "params_ema"]), default=None,
                      help="BasicSR checkpoints: which weights (default params_ema when present).")(fn)
    fn = click.option("--value-range", type=click.Choice(["255", "1"]), default=None,
                      help="Pixel range the model was trained on (paper: 255, BasicSR: 1).")(fn)
    fn = click.option("--with-idt/--no-with-idt", "with_idt", default=None,
                      help="Blocks add their input (the paper's idt_ecbsr).")(fn)
    fn = click.option("--act", type=click.Choice(list(ACTIVATIONS)), default=None,
                      help="Activation, when the weights cannot tell (not PReLU).")(fn)
    fn = click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                      default=None, help="The paper's YAML training config (m_ecbsr, c_ecbsr, act_type, idt_ecbsr).")(fn)
    return fn


def load_kwargs(config_path, act, with_idt, value_range, params_key) -> dict:
    return {"config": config_path, "act": act, "with_idt": with_idt,
            "value_range": None if value_range is None else float(value_range), "params_key": params_key}


def write_json(path: Path | None, obj) -> None:
    if path is not None:
        from .export.run import dump_json

        dump_json(path, obj)


def echo_checks(report) -> None:
    for c in report.checks:
        d = c.diff
        mark = "✓" if c.passed else "✗"
        click.echo(f"  {mark} {c.stage:<28} max abs {d.max_abs:.3g}  rel {d.max_rel:.3g}  "
                   f"border {d.border_max_abs:.3g}  interior {d.interior_max_abs:.3g}  "
                   f"PSNR {_db(d.psnr_db)} dB")
        click.echo(f"      {c.why}")
    if report.quality is not None:
        q = report.quality
        mark = "✓" if q.passed else "✗"
        click.echo(f"  {mark} PSNR vs HR on {q.images} held-out image(s): reference {q.reference_psnr:.3f} dB, "
                   f"file {q.candidate_psnr:.3f} dB, drop {q.drop:.3f} dB (gate ≤ {q.max_drop:g} dB)")


def _db(x: float) -> str:
    from .numerics import fmt_db

    return fmt_db(x)


# ---------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ecbconvert")
def main():
    """Fuse, export, verify and benchmark ECBSR super-resolution models.

    Exit codes: 0 success · 1 a numeric gate failed (artifacts kept) · 2 usage error ·
    3 an input could not be read or understood.
    """


@main.command()
@click.argument("checkpoint", type=EXISTING_FILE)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: CHECKPOINT's name with _fused.pt).")
@click.option("--layout", type=click.Choice(["ecbconvert", "plain"]), default="ecbconvert", show_default=True,
              help="ecbconvert: self-describing file; plain: bare PlainSR state_dict (the paper's deploy keys).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@loader_options
@handle_errors
def fuse(checkpoint, output, layout, report_path, **lk):
    """Fold every ECB into one 3x3 conv, exactly, and prove it (float64 and float32)."""
    from .fusion import fuse_checkpoint, render_fuse

    result = fuse_checkpoint(checkpoint, output=output, layout=layout, load_kwargs=load_kwargs(**lk))
    click.echo(render_fuse(result))
    write_json(report_path, result.to_dict())
    if not result.passed:
        click.echo(f"error: fusion check failed (file kept at {result.output}): " + "; ".join(result.failures()),
                   err=True)
        sys.exit(1)


@main.command()
@click.argument("reference", type=EXISTING_FILE)
@click.argument("candidate", type=EXISTING_FILE)
@click.option("--atol", type=float, default=None, help="Absolute tolerance (default 0).")
@click.option("--rtol", type=float, default=None,
              help="Tolerance relative to the reference's peak (default 1e-5 torch, 1e-4 fp32 files).")
@click.option("--min-psnr", type=float, default=None, help="Least PSNR between outputs, dB (default 50 for fp16).")
@click.option("--max-psnr-drop", type=float, default=0.3, show_default=True,
              help="Quantized files: largest PSNR drop vs HR against the reference, dB.")
@click.option("--input-size", type=SIZE, default=None, help="LR test size (default: the file's own, else 96x96).")
@click.option("--images", "eval_dir", type=IMAGE_DIR, default=None,
              help="Held-out images for the quantized gate (default: bundled eval set).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@loader_options
@handle_errors
def verify(reference, candidate, atol, rtol, min_psnr, max_psnr_drop, input_size, eval_dir, report_path, **lk):
    """CI gate: does CANDIDATE (checkpoint, .onnx, .tflite) compute what REFERENCE does? Exit 1 if not."""
    from .numerics import Tolerance
    from .runtimes import open_runner
    from .verify import default_tolerance
    from .verify import verify as run_verify

    kw = load_kwargs(**lk)
    ref = open_runner(reference, dtype="float64", load_kwargs=kw)
    cand = open_runner(candidate, load_kwargs=kw)
    tol = default_tolerance(cand.variant)
    if any(v is not None for v in (atol, rtol, min_psnr)):
        base = tol or Tolerance(rtol=None)
        tol = Tolerance(atol=atol if atol is not None else base.atol,
                        rtol=rtol if rtol is not None else base.rtol,
                        min_psnr=min_psnr if min_psnr is not None else base.min_psnr)
    size = input_size or cand.fixed_size or (96, 96)
    report = run_verify(ref, cand, size=size, tol=tol, max_drop=max_psnr_drop, eval_dir=eval_dir)
    click.echo(f"verify {candidate} ({cand.format} {cand.variant}) against {reference}:")
    echo_checks(report)
    write_json(report_path, report.to_dict())
    if not report.passed:
        click.echo("error: gate failed: " + "; ".join(report.failures()), err=True)
        sys.exit(1)
    click.echo("PASS")


@main.command()
@click.argument("checkpoint", type=EXISTING_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@loader_options
@handle_errors
def info(checkpoint, as_json, **lk):
    """What a checkpoint (or exported file) is: layout, config, value range, size, MACs."""
    from .fusion import describe

    d = describe(checkpoint, load_kwargs=load_kwargs(**lk))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        click.echo(f"{k:>26}: {v}")


@main.command()
@click.argument("model", type=EXISTING_FILE)
@click.option("--format", "fmt", type=click.Choice(["onnx", "tflite"]), required=True)
@click.option("--quantize", type=click.Choice(["none", "fp16", "dynamic", "int8", "int16x8"]), default="none",
              show_default=True, help="TFLite only.")
@click.option("--io", type=click.Choice(["float", "uint8", "int8"]), default="float", show_default=True,
              help="int8 files: input/output type; uint8 takes and gives raw pixel bytes.")
@click.option("--calib", "calib_dir", type=IMAGE_DIR, default=None,
              help="Calibration photographs (default: the bundled training split).")
@click.option("--calib-count", type=int, default=64, show_default=True, callback=_positive,
              help="Calibration patches.")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "mse"]), default="mse",
              show_default=True, help="int8: how activation ranges are chosen (mse measured best; README).")
@click.option("--input-size", type=SIZE, default=None,
              help="LR input HxW. TFLite: static, default 270x480. ONNX: dynamic unless given.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option("--no-verify", is_flag=True, help="Skip the self-verification (not recommended).")
@click.option("--max-psnr-drop", type=float, default=0.3, show_default=True,
              help="Quantized files: gate on PSNR drop vs HR against the trained model, dB.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Output file.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@loader_options
@handle_errors
def export(model, fmt, quantize, io, calib_dir, calib_count, calib_method, input_size, opset, no_verify,
           max_psnr_drop, output, report_path, **lk):
    """Export MODEL (trained or fused checkpoint) to ONNX or TFLite, then verify the file."""
    from .checkpoint import load
    from .errors import UsageError
    from .export.run import default_output, export_onnx, export_tflite

    if fmt == "onnx" and (quantize != "none" or io != "float"):
        raise UsageError("--quantize and --io apply to --format tflite only")
    if io != "float" and quantize != "int8":
        raise UsageError(f"--io {io} needs --quantize int8")
    if calib_dir is not None and quantize not in ("int8", "int16x8"):
        raise UsageError("--calib applies to --quantize int8 or int16x8 only")
    loaded = load(model, **load_kwargs(**lk))
    out = output or default_output(loaded, fmt, quantize, io)
    if report_path is not None:
        from .atomic import check_output_path

        check_output_path(report_path)
    if fmt == "onnx":
        result = export_onnx(loaded, out, opset=opset, input_size=input_size, check=not no_verify,
                             max_drop=max_psnr_drop)
    else:
        progress = lambda n: click.progressbar(length=n, label="calibrating", file=sys.stderr).__enter__()  # noqa: E731
        result = export_tflite(loaded, out, quantize=quantize, io=io, size=input_size or DEFAULT_TFLITE_SIZE,
                               calib_dir=calib_dir, calib_count=calib_count, calib_method=calib_method,
                               check=not no_verify, max_drop=max_psnr_drop, progress=progress)
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {result.path} ({result.size_bytes / 1024:.1f} KiB, {fmt} {result.variant})")
    click.echo(f"ops ({len(result.ops)}): {' '.join(result.ops)}")
    write_json(report_path, result.to_dict())
    if result.report is not None:
        click.echo(f"verify against {loaded.path}:")
        echo_checks(result.report)
        if not result.report.passed:
            click.echo(f"error: gate failed (file kept at {result.path}): " + "; ".join(result.report.failures()),
                       err=True)
            sys.exit(1)


@main.command()
@click.option("--scale", type=click.Choice(["2", "3", "4"]), required=True, help="Upscaling factor.")
@click.option("--modules", "module_nums", type=click.IntRange(0, 64), default=4, show_default=True, help="M: ECBs between first and last.")
@click.option("--channels", "channel_nums", type=click.IntRange(1, 256), default=16, show_default=True, help="C: feature channels.")
@click.option("--act", type=click.Choice(list(ACTIVATIONS)), default="prelu", show_default=True)
@click.option("--with-idt/--no-with-idt", default=False, show_default=True, help="Blocks add their input.")
@click.option("--colors", type=click.Choice(["1", "3"]), default="1", show_default=True, help="1: Y channel, 3: RGB.")
@click.option("--value-range", type=click.Choice(["255", "1"]), default="255", show_default=True)
@click.option("--images", "images_dir", type=IMAGE_DIR, default=None, help="Training photographs (default: bundled train split).")
@click.option("--iters", type=click.IntRange(1), default=4000, show_default=True)
@click.option("--patch", type=click.IntRange(4), default=48, show_default=True, help="LR patch size.")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--save-every", type=click.IntRange(1), default=500, show_default=True,
              help="Write the checkpoint every N iterations (atomically), so an interrupted run keeps one.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Checkpoint to write (paper layout); its YAML config is written beside it.")
@handle_errors
def train(scale, module_nums, channel_nums, act, with_idt, colors, value_range, images_dir, iters, patch, batch,
          seed, threads, save_every, output):
    """Train an ECBSR from scratch (the paper's recipe, CPU-friendly, deterministic with --seed)."""
    from .atomic import check_output_path
    from .config import ModelConfig
    from .train import train as run_train

    check_output_path(output)
    cfg = ModelConfig(module_nums, channel_nums, int(scale), int(colors), act, with_idt,
                      value_range=float(value_range))
    with click.progressbar(length=iters, label="training", file=sys.stderr,
                           item_show_func=lambda s: s) as bar:
        def on_step(step, loss):
            bar.update(1, f"L1 {loss:.3f}")

        result = run_train(cfg, out=output, images_dir=images_dir, iters=iters, patch=patch, batch=batch,
                           seed=seed, threads=threads, save_every=save_every, on_step=on_step)
    if result.interrupted:
        click.echo(f"interrupted after {result.iters_done} iterations; {output} holds the last complete "
                   "checkpoint, if one was saved", err=True)
        sys.exit(130)
    click.echo(f"wrote {output} and {output.with_suffix('.yml')}: {cfg.name}, {iters} iterations, "
               f"final L1 {result.final_loss:.3f}, {result.wall_s:.0f} s")


@main.command(name="eval")
@click.argument("models", type=EXISTING_FILE, nargs=-1, required=True)
@click.option("--images", "images_dir", type=IMAGE_DIR, default=None,
              help="HR photographs (default: the bundled held-out eval split).")
@click.option("--scale", type=click.Choice(["2", "3", "4"]), default=None, help="Check every model has this scale.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write results as JSON.")
@click.option("--save", "save_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write side-by-side PNG crops (LR nearest, bicubic, each model, HR) here.")
@loader_options
@handle_errors
def eval_cmd(models, images_dir, scale, threads, json_path, save_dir, **lk):
    """PSNR / SSIM on Y (DESIGN.md §6) of any artifacts, with a bicubic baseline and per-image rows."""
    from .evaluate import run_eval

    results, text = run_eval(models, images_dir=images_dir, scale=None if scale is None else int(scale),
                             threads=threads, save_dir=save_dir, load_kwargs=load_kwargs(**lk))
    click.echo(text)
    write_json(json_path, [r.to_dict() for r in results])


@main.command()
@click.argument("models", type=EXISTING_FILE, nargs=-1, required=True)
@click.option("--threads", type=THREADS, default="1", show_default=True, help="Thread counts, e.g. 1,2,4.")
@click.option("--input-size", type=SIZE, default=None, help="LR input HxW (default: the file's own, else 270x480).")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed runs first.")
@click.option("--min-time", type=float, default=2.0, show_default=True, callback=_positive,
              help="Seconds of timed runs per row, at least.")
@click.option("--runs", type=click.IntRange(1), default=10, show_default=True, help="Timed runs per row, at least.")
@click.option("--no-xnnpack", is_flag=True, help="TFLite: LiteRT's built-in kernels instead of XNNPACK.")
@click.option("--profile", is_flag=True, help="Per-op-type times (ONNX Runtime) and op placement (LiteRT).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write records as JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write records as CSV.")
@handle_errors
def bench(models, threads, input_size, warmup, min_time, runs, no_xnnpack, profile, json_path, csv_path):
    """Latency of checkpoints (trained and fused PyTorch), .onnx and .tflite files, side by side."""
    from .atomic import check_output_path
    from .bench import machine, render, run_bench, write_csv

    for p in (json_path, csv_path):
        if p is not None:
            check_output_path(p)
    with click.progressbar(length=0, label="benchmarking", file=sys.stderr, show_pos=True) as bar:
        records = run_bench(list(models), threads=threads, size=input_size, warmup=warmup, min_time=min_time,
                            min_runs=runs, xnnpack=not no_xnnpack, profile=profile, tick=lambda: bar.update(1))
    info = machine()
    click.echo(render(records, info))
    write_json(json_path, {"machine": info, "records": [r.to_dict() for r in records]})
    if csv_path is not None:
        write_csv(csv_path, records)


@main.command()
@click.argument("model", type=EXISTING_FILE)
@click.option("--qat", is_flag=True, required=True, help="Quantization-aware fine-tuning (the only mode).")
@click.option("--images", "images_dir", type=IMAGE_DIR, default=None, help="Training photographs (default: bundled).")
@click.option("--calib", "calib_dir", type=IMAGE_DIR, default=None, help="Calibration photographs (default: bundled).")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "mse"]), default="mse", show_default=True)
@click.option("--iters", type=click.IntRange(1), default=300, show_default=True)
@click.option("--lr", type=float, default=2e-5, show_default=True, callback=_positive)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Fused output file (default: MODEL's name with _qat.pt).")
@loader_options
@handle_errors
def finetune(model, qat, images_dir, calib_dir, calib_method, iters, lr, seed, output, **lk):
    """Fine-tune the fused network with int8 fake quantization, for full-int8 export with less loss."""
    import torch

    from .atomic import check_output_path
    from .checkpoint import load, save_fused
    from .qat import finetune as run_qat

    src = load(model, **load_kwargs(**lk))
    out = output or src.path.with_name(f"{src.path.stem.removesuffix('_fused')}_qat.pt")
    check_output_path(out, inputs=(src.path,))
    plain = src.fused_state_dict(torch.float64)
    with click.progressbar(length=iters, label="QAT", file=sys.stderr, item_show_func=lambda s: s) as bar:
        qmodel, result = run_qat(src.config, plain, images_dir=images_dir, calib_dir=calib_dir, iters=iters, lr=lr,
                                 method=calib_method, seed=seed, on_step=lambda i, loss: bar.update(1, f"L1 {loss:.3f}"))
    save_fused(out, src.config, qmodel.plain_state_dict(), source=src, extras=qmodel.extras(calib_method))
    click.echo(f"wrote {out}: {iters} QAT iterations ({calib_method} ranges), L1 under fake quantization "
               f"{result.first_loss:.3f} → {result.last_loss:.3f}")
    click.echo(f"next: ecbconvert export {out} --format tflite --quantize int8 --io uint8   (keeps these ranges), then "
               f"ecbconvert verify {src.path} <file> --max-psnr-drop 0.1")
