"""Benchmarks: per (model, backend, threads) latency percentiles, throughput and memory.

Honest by construction: inputs are prepared outside the timed region (what is timed is the
runtime's own invoke: torch forward / ORT run / LiteRT invoke, output conversion excluded), a
warm-up precedes runs sized to a minimum time, and every record carries the machine and package
versions. Nothing here is asserted in tests: numbers are for people and for comparing releases.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .runtimes import Runner, open_runner

FIELDS = ["model", "format", "variant", "backend", "threads", "input_size", "median_ms", "p90_ms", "p99_ms",
          "min_ms", "init_ms", "first_ms", "runs", "fps", "gmacs_per_s", "peak_rss_mb", "threads_applied"]


@dataclass
class Record:
    model: str
    format: str
    variant: str
    backend: str
    threads: int
    input_size: str
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    init_ms: float
    first_ms: float
    runs: int
    fps: float
    gmacs_per_s: float
    peak_rss_mb: float
    threads_applied: int | None
    profile: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    from importlib import metadata

    for pkg in ("ecbconvert", "torch", "onnxruntime", "ai-edge-litert", "tensorflow-cpu", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def threads_applied(runner: Runner) -> int | None:
    """The thread count the runtime reports back, where it does."""
    if runner.backend == "torch":
        import torch

        return torch.get_num_threads()
    if runner.backend == "onnxruntime":
        return runner.session.get_session_options().intra_op_num_threads
    return None  # LiteRT's Python API does not expose it


def macs_of(runner: Runner, h: int, w: int) -> int:
    from .fusion import trained_counts

    per_pixel = trained_counts(runner.config)[2] if runner.variant == "trained" else runner.config.macs_per_lr_pixel()
    return per_pixel * h * w


def time_runner(runner: Runner, x: np.ndarray, *, warmup: int, min_time: float, min_runs: int,
                init_ms: float, tick: Callable[[], None] | None = None) -> tuple[list[float], float]:
    prepared = runner.prepare(x)
    t0 = time.perf_counter()
    runner.invoke(prepared)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        runner.invoke(prepared)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        runner.invoke(prepared)
        times.append((time.perf_counter() - t0) * 1e3)
        if tick:
            tick()
    return times, first_ms


def bench_one(path: Path, *, threads: int, size: tuple[int, int] | None, fused: bool | None, warmup: int,
              min_time: float, min_runs: int, xnnpack: bool, profile: bool,
              tick: Callable[[], None] | None = None) -> Record:
    t0 = time.perf_counter()
    runner = open_runner(path, threads=threads, fused=fused, xnnpack=xnnpack)
    init_ms = (time.perf_counter() - t0) * 1e3
    h, w = resolve_size(runner, size)
    runner.config.check_memory(h, w, bytes_per_value=4)
    x = np.random.default_rng(0).uniform(0, runner.config.value_range, (1, runner.config.colors, h, w))
    times, first_ms = time_runner(runner, x, warmup=warmup, min_time=min_time, min_runs=min_runs,
                                  init_ms=init_ms, tick=tick)
    med = statistics.median(times)
    rec = Record(
        model=str(path), format=runner.format, variant=runner.variant, backend=runner.backend, threads=threads,
        input_size=f"{h}x{w}", median_ms=med, p90_ms=percentile(times, 90), p99_ms=percentile(times, 99),
        min_ms=min(times), init_ms=init_ms, first_ms=first_ms, runs=len(times), fps=1e3 / med,
        gmacs_per_s=macs_of(runner, h, w) / (med * 1e-3) / 1e9,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        threads_applied=threads_applied(runner),
    )
    if profile:
        rec.profile = profile_runner(runner, x)
    return rec


def resolve_size(runner: Runner, size: tuple[int, int] | None) -> tuple[int, int]:
    """The LR size to run: the requested one, else the file's own, else 270x480."""
    if size is None:
        return tuple(runner.fixed_size) if runner.fixed_size else (270, 480)
    if runner.fixed_size and tuple(size) != tuple(runner.fixed_size) and runner.format == "onnx":
        raise InputError(f"{runner.path}: built for {runner.fixed_size[0]}x{runner.fixed_size[1]} input; "
                         f"--input-size {size[0]}x{size[1]} needs a re-export with that size (or without one)")
    return tuple(size)


def profile_runner(runner: Runner, x: np.ndarray) -> dict:
    """Per-op-type time (ONNX Runtime) or the op placement (LiteRT: which ops XNNPACK did not take)."""
    if runner.backend == "onnxruntime":
        import json

        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.intra_op_num_threads = runner.threads
        opts.profile_file_prefix = "/tmp/ecbconvert_ort_profile"
        sess = ort.InferenceSession(str(runner.path), opts, providers=["CPUExecutionProvider"])
        feeds = runner.prepare(x)
        for _ in range(5):
            sess.run(None, feeds)
        trace = Path(sess.end_profiling())
        per_op: dict[str, float] = {}
        for ev in json.loads(trace.read_text()):
            op = ev.get("args", {}).get("op_name")
            if ev.get("cat") == "Node" and op and ev.get("name", "").endswith("_kernel_time"):
                per_op[op] = per_op.get(op, 0.0) + ev["dur"] / 1e3 / 5
        trace.unlink(missing_ok=True)
        return {"per_op_type_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}
    if runner.format == "tflite":
        return {"ops_outside_delegate": ops_outside_delegate(runner.interp)}
    return {}


def run_bench(models: list[Path], *, threads: list[int], size: tuple[int, int] | None, warmup: int = 3,
              min_time: float = 2.0, min_runs: int = 10, xnnpack: bool = True, profile: bool = False,
              tick: Callable[[], None] | None = None) -> list[Record]:
    """One record per (model, variant, threads); checkpoints give a trained and a fused row."""
    from .checkpoint import load
    from .runtimes import model_kind

    plan: list[tuple[Path, bool | None]] = []
    for m in models:
        m = Path(m)
        if model_kind(m) != "checkpoint":
            plan.append((m, None))
        else:
            loaded = load(m)  # read once up front so that a bad file fails before any timing
            plan += [(m, False), (m, True)] if not loaded.fused else [(m, None)]
    return [bench_one(m, threads=t, size=size, fused=f, warmup=warmup, min_time=min_time, min_runs=min_runs,
                      xnnpack=xnnpack, profile=profile, tick=tick)
            for m, f in plan for t in threads]


def render(records: list[Record], info: dict) -> str:
    from .tables import table

    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    head = [f"CPU: {info['cpu']} ({info['cores']} cores), Python {info['python']}", f"packages: {versions}",
            "timed: the runtime's invoke only (input prepared before, output conversion after); "
            "median of runs after warm-up"]
    base = records[0].median_ms if records else 1.0
    rows = [[f"{Path(r.model).name} [{r.variant}]", r.backend, r.threads, r.input_size, f"{r.median_ms:.2f}",
             f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.min_ms:.2f}", f"{r.init_ms:.0f}", f"{r.first_ms:.1f}",
             f"{r.fps:.1f}", f"{r.gmacs_per_s:.1f}", f"{r.peak_rss_mb:.0f}", f"{base / r.median_ms:.2f}×"]
            for r in records]
    out = head + [table(rows, ["model", "backend", "thr", "LR size", "median ms", "p90", "p99", "min", "init ms",
                               "first ms", "FPS", "GMAC/s", "RSS MB", "speed-up"])]
    for r in records:
        if r.profile:
            out.append(f"profile {Path(r.model).name} ({r.backend}, {r.threads} thr): {r.profile}")
    return "\n".join(out)


def write_csv(path: Path, records: list[Record]) -> None:
    import csv
    import io

    from . import atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow(r.to_dict())
    atomic.write_text(path, buf.getvalue())


def ops_outside_delegate(interp) -> list[str]:
    """Names of the ops LiteRT runs itself rather than through a delegate (XNNPACK).

    The Python API lists every node, replaced ones included, so placement is read from the data
    flow: an op is outside when its output feeds a DELEGATE node, is a graph output no delegate
    produces, or feeds another outside op without being a delegate's output.
    """
    ops = interp._get_ops_details()  # noqa: SLF001 - the only node-level view LiteRT's Python API gives
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    if not delegates:
        return [op["op_name"] for op in ops]
    d_in = {int(t) for op in delegates for t in op["inputs"]}
    d_out = {int(t) for op in delegates for t in op["outputs"]}
    graph_out = {d["index"] for d in interp.get_output_details()}
    plain = [op for op in ops if op["op_name"] != "DELEGATE"]
    outside = {i for i, op in enumerate(plain)
               if any(int(t) in d_in or (int(t) in graph_out and int(t) not in d_out) for t in op["outputs"])}
    changed = True
    while changed:
        changed = False
        needed = {int(t) for i in outside for t in plain[i]["inputs"]}
        for i, op in enumerate(plain):
            if i not in outside and any(int(t) in needed and int(t) not in d_out for t in op["outputs"]):
                outside.add(i)
                changed = True
    return [plain[i]["op_name"] for i in sorted(outside)]
