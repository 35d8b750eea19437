"""TFLite export: a TF graph built directly from the fused weights, converted by the TF converter.

NHWC in ([1, H, W, colors]) and out ([1, sH, sW, colors]); one CONV_2D per layer (bias fused),
PReLU as one PRELU op in float files, the residual ADD (a TILE for colors=3) and one
DEPTH_TO_SPACE. No onnx2tf and no TRANSPOSE. Static size (default 270×480, the paper's own
converter's), which XNNPACK plans for; runners resize when asked for another size.

Quantized files (DESIGN.md §5): PReLU is lowered to maximum(x, α·x) (every α ≤ 1) or
minimum(x, α·x) (every α ≥ 1) so that XNNPACK runs the int8 graph; full-int8 activation ranges
come from calibration on real LR images, then are set by the chosen method (quant.py) between
the converter's calibration and quantization steps.
"""

from __future__ import annotations

import json
import os

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


def prelu_int8(tf, y, alpha: np.ndarray):
    """PReLU written with ops XNNPACK runs in int8: y + relu(-(1-α)·y), exactly, for α ≤ 1.

    For y ≥ 0 the relu term is 0; for y < 0 it is -(1-α)·y, so the sum is α·y. The term is one
    1x1 depthwise conv (per-channel int8 weights -(1-α)) with the relu fused into it, then one
    ADD. Export first rewrites the network so that every α ≤ 1 (reparam.prelu_slopes_at_most_one).
    XNNPACK takes none of the alternatives in int8 (LiteRT 2.3): not PRELU, not MAXIMUM (for
    max(y, α·y)), not MUL by a per-channel constant.
    """
    if np.any(alpha > 1):
        raise ValueError("prelu_int8 needs every slope ≤ 1; apply deploy.slopes_at_most_one first")
    kernel = tf.constant((alpha - 1.0).reshape(1, 1, -1, 1).astype(np.float32))
    return y + tf.nn.relu(tf.nn.depthwise_conv2d(y, kernel, [1, 1, 1, 1], "VALID"))


def build_tf_function(cfg: ModelConfig, layers: list[Layer], *, size: tuple[int, int], lower_prelu: bool):
    """A tf.function over [1, H, W, colors] float32 returning {"sr": [1, sH, sW, colors]}."""
    tf = _tf()
    h, w = size
    s = cfg.scale
    consts = []
    for layer in layers:
        kernel = tf.constant(np.transpose(layer.weight, (2, 3, 1, 0)).astype(np.float32))  # HWIO
        bias = tf.constant(layer.bias.astype(np.float32))
        # PReLU slopes shaped (1, 1, C), as Keras' PReLU(shared_axes=[1, 2]) holds them: the
        # converter fuses relu(y) + (-α)·relu(-y) into one PRELU op only for that shape.
        alpha = None if layer.alpha is None else tf.constant(layer.alpha.reshape(1, 1, -1).astype(np.float32))
        consts.append((kernel, bias, alpha, layer))

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, cfg.colors], tf.float32, name="lr")])
    def sr(x):
        y = x
        for kernel, bias, alpha, layer in consts:
            y = tf.nn.bias_add(tf.nn.conv2d(y, kernel, 1, "SAME"), bias)
            if layer.act == "prelu":
                mode = "int8" if lower_prelu else "prelu"
                if mode == "int8":
                    y = prelu_int8(tf, y, layer.alpha)
                else:  # relu(y) + (-α)·relu(-y): the pattern the converter fuses into one PRELU op
                    y = tf.nn.relu(y) + tf.nn.relu(-y) * (-alpha)
            elif layer.act in ("relu", "rrelu"):
                y = tf.nn.relu(y)
            elif layer.act == "softplus":
                y = tf.math.softplus(y)
        res = x if cfg.colors == 1 else tf.tile(x, [1, 1, 1, s * s])
        return {"sr": tf.nn.depth_to_space(y + res, s)}

    return sr


def convert(
    cfg: ModelConfig,
    layers: list[Layer],
    *,
    quantize: str = "none",
    io: str = "float",
    size: tuple[int, int] = DEFAULT_SIZE,
    calib: list[np.ndarray] | None = None,
    calib_method: str = "mse",
    fixed_ranges: dict | None = None,
    meta: dict | None = None,
) -> bytes:
    """Convert to .tflite bytes. calib: NHWC float32 LR patches at `size` (int8 / int16x8)."""
    from .. import quant

    tf = _tf()
    if quantize not in QUANTIZE_MODES:
        raise ValueError(quantize)
    has_prelu = any(layer.act == "prelu" for layer in layers)
    lower = quantize in ("int8", "int16x8") and has_prelu
    fn = build_tf_function(cfg, layers, size=size, lower_prelu=lower)
    holder = tf.Module()
    holder.sr = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], holder)
    if quantize in ("fp16", "dynamic", "int8", "int16x8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize in ("int8", "int16x8"):
        if not calib:
            raise ValueError("calibration patches needed")
        converter.representative_dataset = lambda: ([x] for x in calib)
    if quantize == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_calibrate_only = True  # noqa: SLF001 - the documented two-step path
        calibrated = quant.set_ranges(converter.convert(), calib, method=calib_method, value_range=cfg.value_range,
                                      fixed=fixed_ranges)
        data = quant.quantize_calibrated(calibrated, io)
    else:
        if quantize == "int16x8":  # DEPTH_TO_SPACE has no int16 kernel: it falls back to float
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
        data = converter.convert()
    meta = dict(meta or {})
    meta.update(config=cfg.to_dict(), variant="fp32" if quantize == "none" else quantize, io=io,
                input_size=list(size))
    if quantize in ("int8", "int16x8"):
        meta.update(calib_method=calib_method if quantize == "int8" else "minmax", calib_count=len(calib))
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
