"""TFLite export: a TF graph built directly from the fused weights, converted by the TF converter.

NHWC in ([1, H, W, colors]) and out ([1, sH, sW, colors]); one CONV_2D per layer (bias fused),
PReLU as one PRELU op in float files, the residual ADD (a TILE for colors=3) and one
DEPTH_TO_SPACE. No onnx2tf and no TRANSPOSE. Static size (default 270×480, the paper's own
converter's), which XNNPACK plans for; runners resize when asked for another size.

Quantized files (DESIGN.md §5): PReLU is lowered to maximum(x, α·x) (every α ≤ 1) or
minimum(x, α·x) (every α ≥ 1) so that XNNPACK runs the int8 graph; full-int8 activation ranges
come from calibration on real LR images, set by the chosen method (quant.py) and pinned in the
graph as fake-quant nodes, which the converter honours.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable

import numpy as np

from ..config import ModelConfig
from ..runtimes import META_KEY
from .deploy import Layer

DEFAULT_SIZE = (270, 480)
QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8", "int16x8")


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def prelu_lowering(alpha: np.ndarray) -> str:
    """How a PReLU with slopes alpha becomes XNNPACK-friendly int8: 'max', 'min' or 'prelu'."""
    if np.all(alpha <= 1.0):
        return "max"
    if np.all(alpha >= 1.0):
        return "min"
    return "prelu"


def build_tf_function(cfg: ModelConfig, layers: list[Layer], *, size: tuple[int, int], lower_prelu: bool,
                      ranges: list[tuple[float, float]] | None = None, io_range: bool = False):
    """A tf.function over [1, H, W, colors] float32.

    ranges: per layer output (after activation) (min, max), pinned with fake-quant nodes;
    io_range: pin input and output to [0, value_range] (exact uint8 pixel I/O, output clipped).
    """
    tf = _tf()
    h, w = size
    s, vr = cfg.scale, float(cfg.value_range)
    consts = []
    for layer in layers:
        kernel = tf.constant(np.transpose(layer.weight, (2, 3, 1, 0)).astype(np.float32))  # HWIO
        bias = tf.constant(layer.bias.astype(np.float32))
        # PReLU slopes shaped (1, 1, C), as Keras' PReLU(shared_axes=[1, 2]) holds them: the
        # converter fuses relu(y) + (-α)·relu(-y) into one PRELU op only for that shape.
        alpha = None if layer.alpha is None else tf.constant(layer.alpha.reshape(1, 1, -1).astype(np.float32))
        consts.append((kernel, bias, alpha, layer))

    def fq(t, lo, hi):
        return tf.quantization.fake_quant_with_min_max_args(t, min=float(lo), max=float(hi), num_bits=8)

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, cfg.colors], tf.float32, name="lr")])
    def sr(x):
        if io_range:
            x = fq(x, 0.0, vr)
        y = x
        for d, (kernel, bias, alpha, layer) in enumerate(consts):
            y = tf.nn.bias_add(tf.nn.conv2d(y, kernel, 1, "SAME"), bias)
            if layer.act == "prelu":
                mode = prelu_lowering(layer.alpha) if lower_prelu else "prelu"
                if mode == "max":
                    y = tf.maximum(y, y * alpha)
                elif mode == "min":
                    y = tf.minimum(y, y * alpha)
                else:  # relu(y) + (-α)·relu(-y): the pattern the converter fuses into one PRELU op
                    y = tf.nn.relu(y) + tf.nn.relu(-y) * (-alpha)
            elif layer.act in ("relu", "rrelu"):
                y = tf.nn.relu(y)
            elif layer.act == "softplus":
                y = tf.math.softplus(y)
            if ranges is not None and d < len(layers) - 1:
                y = fq(y, *ranges[d])
        res = x if cfg.colors == 1 else tf.tile(x, [1, 1, 1, s * s])
        y = y + res
        if ranges is not None and len(ranges) == len(layers):
            y = fq(y, *ranges[-1])
        y = tf.nn.depth_to_space(y, s)
        if io_range:  # quantizing to [0, value_range] also clips the output to the pixel range
            y = fq(y, 0.0, vr)
        return {"sr": y}

    return sr


def convert(
    cfg: ModelConfig,
    layers: list[Layer],
    *,
    quantize: str = "none",
    io: str = "float",
    size: tuple[int, int] = DEFAULT_SIZE,
    calib: Callable[[], Iterable[np.ndarray]] | None = None,
    ranges: list[tuple[float, float]] | None = None,
    meta: dict | None = None,
) -> bytes:
    """Convert to .tflite bytes. calib yields NHWC float32 LR patches at `size` (int8/int16x8)."""
    tf = _tf()
    if quantize not in QUANTIZE_MODES:
        raise ValueError(quantize)
    has_prelu = any(layer.act == "prelu" for layer in layers)
    lower = quantize in ("int8", "int16x8") and has_prelu
    if lower and any(prelu_lowering(layer.alpha) == "prelu" for layer in layers if layer.act == "prelu"):
        warnings.warn("PReLU slopes on both sides of 1: kept as PRELU, which XNNPACK does not run in int8 "
                      "(expect a slow file)", stacklevel=2)
    fn = build_tf_function(cfg, layers, size=size, lower_prelu=lower,
                           ranges=ranges if quantize == "int8" else None,
                           io_range=quantize == "int8")
    holder = tf.Module()
    holder.sr = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], holder)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize in ("int8", "int16x8"):
        if calib is None:
            raise ValueError("calibration data needed")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x] for x in calib())
        if quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = {"uint8": tf.uint8, "int8": tf.int8, "float": tf.float32}[io]
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        else:  # DEPTH_TO_SPACE has no int16 kernel: allow float fallback for it
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
    data = converter.convert()
    meta = dict(meta or {})
    meta.update(config=cfg.to_dict(), variant="fp32" if quantize == "none" else quantize, io=io,
                input_size=list(size))
    return add_metadata(data, META_KEY, json.dumps(meta, sort_keys=True).encode())


def add_metadata(model_bytes: bytes, name: str, payload: bytes) -> bytes:
    """Append a named metadata buffer to a .tflite flatbuffer (read back by runtimes)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    buf = schema.BufferT()
    buf.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_list(model_bytes: bytes) -> list[str]:
    """Builtin operator names of the main subgraph, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM"))
    sub = model.Subgraphs(0)
    return [codes[sub.Operators(i).OpcodeIndex()] for i in range(sub.OperatorsLength())]
