"""ONNX export written directly with onnx.helper from the fused weights.

Graph: per layer one Conv (+ PRelu / Relu / Softplus), then Add of the image-space residual
(a broadcast for colors=1, one Tile for colors=3) and one DepthToSpace(mode=DCR). Writing the
graph by hand rather than tracing PixelShuffle through torch.onnx keeps it at this minimum (the
tracer emits Reshape/Transpose/Reshape for PixelShuffle) and makes the bytes deterministic.
"""

from __future__ import annotations

import json

import numpy as np

from ..config import ModelConfig
from ..runtimes import META_KEY
from .deploy import Layer

DEFAULT_OPSET = 17


def build_onnx(cfg: ModelConfig, layers: list[Layer], *, opset: int = DEFAULT_OPSET,
               input_size: tuple[int, int] | None = None, meta: dict | None = None):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s, c = cfg.scale, cfg.colors
    h, w = input_size if input_size else ("height", "width")
    oh, ow = (h * s, w * s) if input_size else ("out_height", "out_width")
    inputs = [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["batch", c, h, w])]
    outputs = [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["batch", c, oh, ow])]
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    x = "lr"
    for d, layer in enumerate(layers):
        wname = const(f"layer{d}.weight", layer.weight)
        bname = const(f"layer{d}.bias", layer.bias)
        y = f"layer{d}.conv"
        nodes.append(helper.make_node("Conv", [x, wname, bname], [y], name=f"layer{d}.conv",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        if layer.act == "prelu":
            slope = const(f"layer{d}.alpha", layer.alpha.reshape(-1, 1, 1))
            nodes.append(helper.make_node("PRelu", [y, slope], [f"layer{d}.act"], name=f"layer{d}.prelu"))
            y = f"layer{d}.act"
        elif layer.act in ("relu", "rrelu"):
            nodes.append(helper.make_node("Relu", [y], [f"layer{d}.act"], name=f"layer{d}.relu"))
            y = f"layer{d}.act"
        elif layer.act == "softplus":
            nodes.append(helper.make_node("Softplus", [y], [f"layer{d}.act"], name=f"layer{d}.softplus"))
            y = f"layer{d}.act"
        x = y
    res = "lr"
    if c > 1:
        inits.append(numpy_helper.from_array(np.array([1, s * s, 1, 1], dtype=np.int64), "residual.repeats"))
        nodes.append(helper.make_node("Tile", ["lr", "residual.repeats"], ["residual"], name="residual.tile"))
        res = "residual"
    nodes.append(helper.make_node("Add", [x, res], ["pre_shuffle"], name="residual.add"))
    nodes.append(helper.make_node("DepthToSpace", ["pre_shuffle"], ["sr"], name="depth_to_space",
                                  blocksize=s, mode="DCR"))
    graph = helper.make_graph(nodes, cfg.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="ecbconvert")
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else model.ir_version)
    meta = dict(meta or {})
    meta.update(config=cfg.to_dict(), variant="fp32", opset=opset)
    helper.set_model_props(model, {META_KEY: json.dumps(meta, sort_keys=True)})
    onnx.checker.check_model(model, full_check=True)
    return model


def simplify(model):
    """onnxsim's simplification; the caller keeps it only if it still verifies."""
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    return simplified if ok else None


def op_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]
