"""Full-integer quantization with activation ranges we choose, not only the converter's min/max.

The converter is run in two halves: calibration only (a float model whose every activation tensor
carries the min/max seen on the calibration patches), then quantization of that calibrated
model. Between the two we set the ranges:

* input and output are pinned to [0, value_range]: uint8 I/O then has scale 1 (or 1/255) and
  zero point 0, and the output is clipped to the pixel range by its own quantization;
* `minmax` keeps the calibrated extremes; `percentile` clips each activation to the
  [0.001 %, 99.999 %] quantiles of its histogram on the calibration set; `mse` picks, per
  tensor, the clipping range minimising clipping error + rounding noise (step²/12 per value).

Histograms come from running the calibrated float model itself (LiteRT, every tensor kept), so
the statistics are those of exactly the tensors the quantizer will see.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CALIB_METHODS = ("minmax", "percentile", "mse")
BINS = 2048
PERCENTILE = 99.999


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def calibrated_ranges(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """{tensor index: (min, max)} of every tensor the calibrator annotated."""
    model = _schema().ModelT.InitFromPackedBuf(calibrated, 0)
    out = {}
    for i, t in enumerate(model.subgraphs[0].tensors):
        q = t.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1:
            out[i] = (float(q.min[0]), float(q.max[0]))
    return out


def io_tensors(calibrated: bytes) -> tuple[list[int], list[int]]:
    sg = _schema().ModelT.InitFromPackedBuf(calibrated, 0).subgraphs[0]
    return list(sg.inputs), list(sg.outputs)


def _depth_to_space_inputs(calibrated: bytes, outputs: list[int]) -> list[int]:
    """Inputs of a DEPTH_TO_SPACE producing an output: same scale as the output, so pinned with it."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(calibrated, 0)
    found = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEPTH_TO_SPACE \
                and op.outputs[0] in outputs:
            found.append(int(op.inputs[0]))
    return found


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated model with the given tensors' min/max replaced."""
    model = _schema().ModelT.InitFromPackedBuf(calibrated, 0)
    tensors = model.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        q = tensors[i].quantization
        q.min, q.max = np.array([lo], np.float32), np.array([hi], np.float32)
    return _pack(model)


def histograms(calibrated: bytes, patches: Iterable[np.ndarray], bounds: dict[int, tuple[float, float]]):
    """Per tensor, a histogram of its values over all patches, on the calibrated [min, max]."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": that is what we do
        warnings.simplefilter("ignore")
        interp = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    hists = {i: np.zeros(BINS, np.int64) for i in bounds}
    for x in patches:
        interp.set_tensor(inp, x)
        interp.invoke()
        for i, (lo, hi) in bounds.items():
            if hi > lo:
                hists[i] += np.histogram(interp.get_tensor(i), BINS, (lo, hi))[0]
    return hists


def choose_range(hist: np.ndarray, lo: float, hi: float, method: str) -> tuple[float, float]:
    """A clipping range [a, b] ∋ 0 for values histogrammed on [lo, hi] (int8: 255 steps)."""
    if method == "minmax" or hist.sum() == 0 or hi <= lo:
        return lo, hi
    edges = np.linspace(lo, hi, len(hist) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(hist) / hist.sum()
    if method == "percentile":
        tail = (100.0 - PERCENTILE) / 100.0
        a = edges[np.searchsorted(cdf, tail)] if lo < 0 else lo
        b = edges[min(len(hist), np.searchsorted(cdf, 1.0 - tail) + 1)]
        return min(a, 0.0), max(b, 0.0)
    if method == "mse":
        best, best_err = (lo, hi), np.inf
        for shrink_lo in np.linspace(0.2, 1.0, 17) if lo < 0 else [1.0]:
            for shrink_hi in np.linspace(0.2, 1.0, 17) if hi > 0 else [1.0]:
                a, b = lo * shrink_lo, hi * shrink_hi
                step = (b - a) / 255.0
                clipped = np.clip(centres, a, b)
                err = np.sum(hist * (centres - clipped) ** 2) + np.sum(hist[(centres >= a) & (centres <= b)]) * step**2 / 12
                if err < best_err:
                    best, best_err = (min(a, 0.0), max(b, 0.0)), err
        return best
    raise ValueError(f"unknown calibration method {method!r}")


def graph_names(calibrated: bytes) -> dict[int, str]:
    """{tensor index: name} in the QAT graph's terms: '{layer}.conv', '{layer}.relu', '{layer}.sum'.

    Walks the operators of the int8-bound float graph that export/tflite.py builds: per layer a
    CONV_2D; for PReLU then a 1x1 DEPTHWISE_CONV_2D with a fused RELU and the ADD of the conv
    output and that term. Tensors are named by op kind and data flow, not by position.
    """
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(calibrated, 0)
    ops = schema.BuiltinOperator
    names: dict[int, str] = {}
    layer, terms = -1, set()
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = max(code.builtinCode, code.deprecatedBuiltinCode)
        out = int(op.outputs[0])
        if kind == ops.CONV_2D:
            layer = layer + 1
            names[out], terms = f"{layer}.conv", {out}
        elif kind == ops.DEPTHWISE_CONV_2D and set(int(i) for i in op.inputs[:1]) <= terms:
            names[out] = f"{layer}.relu"
            terms.add(out)
        elif kind == ops.ADD and len(terms) > 1 and set(int(i) for i in op.inputs) <= terms:
            names[out] = f"{layer}.sum"
    return names


def set_ranges(calibrated: bytes, patches: list[np.ndarray], *, method: str, value_range: float,
               fixed: dict[str, tuple[float, float]] | None = None) -> bytes:
    """The calibrated model with I/O pinned to [0, value_range] and activations ranged by method.

    fixed: ranges by graph name (from QAT), used as they are for the tensors they name.
    """
    bounds = calibrated_ranges(calibrated)
    inputs, outputs = io_tensors(calibrated)
    chosen: dict[int, tuple[float, float]] = {}
    if fixed:
        names = graph_names(calibrated)
        chosen = {i: tuple(fixed[n]) for i, n in names.items() if n in fixed}
        bounds = {i: r for i, r in bounds.items() if i not in chosen}
    if method != "minmax":
        inner = {i: r for i, r in bounds.items() if i not in inputs and i not in outputs}
        hists = histograms(calibrated, patches, inner)
        chosen.update({i: choose_range(hists[i], *inner[i], method) for i in inner})
    for i in inputs + outputs + _depth_to_space_inputs(calibrated, outputs):
        chosen[i] = (0.0, float(value_range))
    return with_ranges(calibrated, chosen)


def quantize_calibrated(calibrated: bytes, io: str) -> bytes:
    """Quantize a calibrated model to full int8 with the given I/O type (float, int8 or uint8)."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    io_type = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io]
    return mlir_quantize(calibrated, input_data_type=io_type, output_data_type=io_type)
