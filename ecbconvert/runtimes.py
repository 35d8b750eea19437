"""One interface over PyTorch, ONNX Runtime and LiteRT: open_runner(path, threads) -> run(x).

run() takes and returns NCHW float arrays in the model's value range, whatever the file's own
layout (TFLite is NHWC) or I/O type (uint8/int8 files are quantized and dequantized here, with the
file's own scale and zero point), so verify, eval and bench share everything but their loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import InputError

META_KEY = "ecbconvert"


@dataclass
class Runner:
    path: Path
    config: ModelConfig
    format: str  # checkpoint | onnx | tflite
    variant: str  # trained | fused | fp32 | fp16 | dynamic | int8 | int16x8
    backend: str  # torch | onnxruntime | litert
    threads: int
    fixed_size: tuple[int, int] | None = None  # (H, W) the file was built for, if static
    details: dict = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.variant in ("int8", "int16x8", "dynamic")

    def prepare(self, x: np.ndarray):
        """Convert a NCHW float input once (outside any timed region) into what _invoke takes."""
        raise NotImplementedError

    def invoke(self, prepared):
        raise NotImplementedError

    def finish(self, raw) -> np.ndarray:
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.finish(self.invoke(self.prepare(x)))


class TorchRunner(Runner):
    def __init__(self, loaded, *, threads: int, fused: bool | None = None, dtype: str = "float32"):
        import torch

        torch.set_num_threads(threads)
        self._torch = torch
        self._dtype = getattr(torch, dtype)
        want_fused = loaded.fused if fused is None else fused
        if want_fused and not loaded.fused:
            from .arch import build

            module = build(loaded.config, loaded.fused_state_dict(torch.float64), fused=True, dtype=self._dtype)
        elif not want_fused and loaded.fused:
            raise InputError(f"{loaded.path}: a fused file has no trained (multi-branch) graph")
        else:
            module = loaded.build(self._dtype)
        self.module = module
        super().__init__(loaded.path, loaded.config, "checkpoint", "fused" if want_fused else "trained", "torch",
                         threads, details={"layout": loaded.layout, "dtype": dtype})

    def prepare(self, x):
        return self._torch.from_numpy(np.ascontiguousarray(x)).to(self._dtype)

    def invoke(self, t):
        with self._torch.inference_mode():
            return self.module(t)

    def finish(self, raw):
        return raw.double().numpy()


class OnnxRunner(Runner):
    def __init__(self, path: Path, *, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise InputError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if meta is None:
            raise InputError(f"{path}: ONNX file was not written by ecbconvert export (no '{META_KEY}' metadata)")
        meta = json.loads(meta)
        inp = self.session.get_inputs()[0]
        self._name = inp.name
        self._dtype = np.float16 if "float16" in inp.type else np.float32
        h, w = inp.shape[2], inp.shape[3]
        fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        super().__init__(path, ModelConfig.from_dict(meta["config"]), "onnx", meta.get("variant", "fp32"),
                         "onnxruntime", threads, fixed, details={"opset": meta.get("opset")})

    def prepare(self, x):
        return {self._name: np.ascontiguousarray(x, dtype=self._dtype)}

    def invoke(self, feeds):
        return self.session.run(None, feeds)[0]

    def finish(self, raw):
        return np.asarray(raw, np.float64)


def read_tflite_metadata(path: Path, data: bytes | None = None) -> dict:
    """The JSON that `ecbconvert export` stores in the .tflite file's metadata table."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes() if data is None else data
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() and entry.Name().decode() == META_KEY:
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception:  # noqa: BLE001 - a corrupt flatbuffer fails in many ways
        raise InputError(f"{path}: not a readable TFLite model (corrupt flatbuffer)") from None
    raise InputError(f"{path}: TFLite file was not written by ecbconvert export (no '{META_KEY}' metadata)")


class TFLiteRunner(Runner):
    def __init__(self, path: Path, *, threads: int, xnnpack: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        data = path.read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise InputError(f"{path}: not a TFLite model (no TFL3 identifier)")
        meta = read_tflite_metadata(path, data)
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interp = Interpreter(model_content=data, num_threads=threads,
                                      experimental_op_resolver_type=resolver)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InputError(f"{path}: not a loadable TFLite model ({_first_line(e)})") from None
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        shape = tuple(int(v) for v in self._in["shape"])
        self._size = shape[1:3]
        super().__init__(path, ModelConfig.from_dict(meta["config"]), "tflite", meta.get("variant", "fp32"),
                         "litert" + ("" if xnnpack else " (no xnnpack)"), threads, self._size,
                         details={"input_dtype": np.dtype(self._in["dtype"]).name,
                                  "output_dtype": np.dtype(self._out["dtype"]).name})

    def resize(self, h: int, w: int) -> None:
        if (h, w) == tuple(self._size):
            return
        c = self.config.colors
        self.interp.resize_tensor_input(self._in["index"], [1, h, w, c], strict=False)
        self.interp.allocate_tensors()
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._size = (h, w)

    def prepare(self, x):
        x = np.asarray(x, np.float64)
        self.resize(x.shape[2], x.shape[3])
        nhwc = np.transpose(x, (0, 2, 3, 1))
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":
            scale, zp = self._in["quantization"]
            info = np.iinfo(dtype)
            nhwc = np.clip(np.round(nhwc / scale + zp), info.min, info.max)
        return np.ascontiguousarray(nhwc, dtype=dtype)

    def invoke(self, x):
        self.interp.set_tensor(self._in["index"], x)
        self.interp.invoke()
        return self.interp.get_tensor(self._out["index"])

    def finish(self, raw):
        y = np.asarray(raw)
        if y.dtype.kind in "iu":
            scale, zp = self._out["quantization"]
            y = (y.astype(np.float64) - zp) * scale
        return np.transpose(y.astype(np.float64), (0, 3, 1, 2))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", "")


def model_kind(path: Path) -> str:
    """'onnx', 'tflite' or 'checkpoint' from the file name; InputError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in (".onnx", ".tflite"):
        return suffix[1:]
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise InputError(f"{path}: unknown model type {suffix!r}; expected .pt/.pth, .onnx or .tflite")


def open_runner(path: Path, *, threads: int = 1, fused: bool | None = None, dtype: str = "float32",
                xnnpack: bool = True, load_kwargs: dict | None = None) -> Runner:
    """A runner for any artifact: .onnx, .tflite, or a checkpoint of any layout (see checkpoint.load)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a model file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    kind = model_kind(path)
    if kind == "onnx":
        return OnnxRunner(path, threads=threads)
    if kind == "tflite":
        return TFLiteRunner(path, threads=threads, xnnpack=xnnpack)
    from .checkpoint import load

    return TorchRunner(load(path, **(load_kwargs or {})), threads=threads, fused=fused, dtype=dtype)
