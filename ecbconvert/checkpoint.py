"""Read every checkpoint layout of DESIGN.md §4 -> (config, state_dict); write outputs atomically.

Loading always uses torch.load(weights_only=True): a checkpoint is untrusted input and must never
execute code. Every failure is an InputError naming the file and what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, atomic
from .config import ModelConfig, config_yaml_text, read_yaml_config
from .errors import InputError

FUSED_FORMAT = "ecbconvert-fused"
_BRANCHES = ("conv3x3", "conv1x1_3x3", "conv1x1_sbx", "conv1x1_sby", "conv1x1_lpl")
_LAYER_KEY = re.compile(r"^backbone\.(\d+)\.(.+)$")


@dataclass
class Loaded:
    """A checkpoint understood: what it is, its config, and a state_dict in our key layout."""

    path: Path
    layout: str  # paper | legacy | basicsr:params | basicsr:params_ema | plain | ecbconvert
    fused: bool
    config: ModelConfig
    state_dict: dict
    sha256: str
    notes: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # e.g. {"qat": {"method": …, "ranges": {…}}}

    def build(self, dtype=None):
        """The torch module: ECBSR for trained checkpoints, PlainSR for fused ones."""
        import torch

        from .arch import build

        return build(self.config, self.state_dict, fused=self.fused, dtype=dtype or torch.float32)

    def fused_state_dict(self, dtype=None) -> dict:
        """PlainSR state_dict: this one if already fused, else the exact fusion of the trained graph."""
        import torch

        from .arch import fuse

        if self.fused:
            return {k: v.to(dtype or torch.float64) for k, v in self.state_dict.items()}
        return fuse(self.build(dtype or torch.float64)).state_dict()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_load(path: Path):
    import torch

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a checkpoint file (.pt/.pth)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise InputError(f"{path}: file is empty; expected a PyTorch checkpoint")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" in msg or "Unsupported global" in msg or "REDUCE" in msg:
            what = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
            detail = f" (it references {what.group(1)})" if what else ""
            raise InputError(f"{path}: refused: the file holds a pickle that would run code{detail}; "
                             "only plain tensors are loaded (weights_only=True)") from None
        raise InputError(f"{path}: not a PyTorch checkpoint (bad pickle data)") from None
    except (zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__})") from None
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "zip" in first.lower() or "archive" in first.lower() or "file" in first.lower():
            raise InputError(f"{path}: truncated or corrupt checkpoint ({first})") from None
        raise InputError(f"{path}: not a PyTorch checkpoint ({first})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for garbage input
        raise InputError(f"{path}: not a PyTorch checkpoint ({type(e).__name__})") from None


def _flat_tensor_dict(obj, path: Path, where: str) -> dict:
    import torch

    if not isinstance(obj, dict) or not obj:
        kind = type(obj).__name__
        raise InputError(f"{path}: {where} is a {kind}, not a state_dict of tensors")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise InputError(f"{path}: {where} has a non-string key {k!r}; not a state_dict")
        if not isinstance(v, torch.Tensor):
            raise InputError(f"{path}: key {k!r} in {where} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu")
    return out


def _unwrap(obj, path: Path, params_key: str | None) -> tuple[str, dict, dict | None, dict]:
    """(layout, raw state_dict, our fused-file config or None, provenance + extras)."""
    if isinstance(obj, dict) and obj.get("format") == FUSED_FORMAT:
        if not isinstance(obj.get("config"), dict):
            raise InputError(f"{path}: ecbconvert file without a 'config' entry; re-run ecbconvert fuse")
        extras = {"qat": obj["qat"]} if isinstance(obj.get("qat"), dict) else {}
        return "ecbconvert", _flat_tensor_dict(obj.get("state_dict"), path, "'state_dict'"), obj["config"], \
            {**dict(obj.get("provenance") or {}), "_extras": extras}
    if isinstance(obj, dict) and ("params" in obj or "params_ema" in obj):
        keys = [k for k in ("params_ema", "params") if k in obj]
        if params_key is None:
            params_key = keys[0]
        elif params_key not in obj:
            raise InputError(f"{path}: --params-key {params_key!r} not in the file; it has {', '.join(keys)}")
        return f"basicsr:{params_key}", _flat_tensor_dict(obj[params_key], path, f"'{params_key}'"), None, {}
    if params_key is not None:
        raise InputError(f"{path}: --params-key {params_key!r} given but the file is not a BasicSR checkpoint")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return "paper", _flat_tensor_dict(obj["state_dict"], path, "'state_dict'"), None, {}
    return "paper", _flat_tensor_dict(obj, path, "the file"), None, {}


def _normalise_keys(sd: dict, path: Path) -> tuple[dict, bool]:
    """Strip DataParallel prefixes and map legacy head/body/tail names to backbone.{d}."""
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if not any(k.startswith(("head.", "body.", "tail.")) for k in sd):
        return sd, False
    body = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^body\.(\d+)\.", k))})
    if body != list(range(len(body))):
        raise InputError(f"{path}: legacy layout with non-contiguous body indices {body[:6]}")
    out = {}
    for k, v in sd.items():
        if m := re.match(r"^head\.0\.(.+)$", k):
            out[f"backbone.0.{m.group(1)}"] = v
        elif m := re.match(r"^body\.(\d+)\.(.+)$", k):
            out[f"backbone.{int(m.group(1)) + 1}.{m.group(2)}"] = v
        elif m := re.match(r"^tail\.0\.(.+)$", k):
            out[f"backbone.{len(body) + 1}.{m.group(1)}"] = v
        else:
            out[k] = v
    return out, True


def _infer(sd: dict, path: Path, fused: bool) -> dict:
    """Shapes -> {module_nums, channel_nums, colors, scale, depth_multiplier, act_type?}."""
    layers = sorted({int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k))})
    if len(layers) < 2 or layers != list(range(len(layers))):
        raise InputError(f"{path}: expected backbone.0 … backbone.N layers; found {len(layers)} "
                         f"(first keys: {', '.join(list(sd)[:3])})")

    def shape(key):
        if key not in sd:
            raise InputError(f"{path}: missing key {key!r}")
        return tuple(sd[key].shape)

    first, last = shape("backbone.0.conv3x3.weight"), shape(f"backbone.{layers[-1]}.conv3x3.weight")
    if len(first) != 4 or len(last) != 4:
        raise InputError(f"{path}: backbone.0.conv3x3.weight has shape {first}; expected (out, in, 3, 3)")
    colors, channels = first[1], first[0]
    out_ch = last[0]
    if colors not in (1, 3) or out_ch % colors:
        raise InputError(f"{path}: first layer takes {colors} channels; expected 1 (Y) or 3 (RGB)")
    s2 = out_ch // colors
    scale = round(math.sqrt(s2))
    if scale * scale != s2 or scale not in (2, 3, 4):
        raise InputError(f"{path}: last layer has {out_ch} outputs for {colors} colours, "
                         f"which is no scale² with scale 2, 3 or 4")
    found = {"module_nums": len(layers) - 2, "channel_nums": channels, "colors": colors, "scale": scale}
    if not fused:
        k0 = shape("backbone.0.conv1x1_3x3.k0")
        found["depth_multiplier"] = k0[0] / channels
    if "backbone.0.act.weight" in sd:
        found["act_type"] = "prelu"
    return found


def _expected_keys(cfg: ModelConfig, fused: bool) -> dict:
    import torch

    from .arch import ECBSR, PlainSR

    with torch.device("meta"):
        model = (PlainSR if fused else ECBSR)(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_keys_and_shapes(sd: dict, cfg: ModelConfig, path: Path, fused: bool) -> None:
    expected = _expected_keys(cfg, fused)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {', '.join(unexpected[:3])}" + (" …" if len(unexpected) > 3 else ""))
        if missing:
            parts.append(f"missing keys {', '.join(missing[:3])}" + (" …" if len(missing) > 3 else ""))
        hint = " (activation: pass --act prelu/relu/… matching the training)" if any(".act." in k for k in missing + unexpected) else ""
        raise InputError(f"{path}: keys do not match an ECBSR {'deploy' if fused else 'training'} "
                         f"graph M{cfg.module_nums}C{cfg.channel_nums}: {'; '.join(parts)}{hint}")
    for k, shp in expected.items():
        if tuple(sd[k].shape) != shp:
            raise InputError(f"{path}: {k} has shape {tuple(sd[k].shape)} but the other layers imply {shp}")


def _check_finite(sd: dict, path: Path) -> None:
    import torch

    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = "NaN" if bool(torch.isnan(v).any()) else "Inf"
            raise InputError(f"{path}: tensor {k!r} holds {bad} values; the checkpoint is broken")


def sidecar_config(path: Path) -> Path | None:
    """The YAML config written beside a checkpoint by `ecbconvert train` (same stem), if any."""
    for suffix in (".yml", ".yaml"):
        cand = path.with_suffix(suffix)
        if cand.is_file():
            return cand
    return None


def load(
    path: Path,
    *,
    config: Path | None = None,
    act: str | None = None,
    with_idt: bool | None = None,
    value_range: float | None = None,
    params_key: str | None = None,
) -> Loaded:
    """Read any supported checkpoint. Explicit flags override --config, which overrides shapes."""
    path = Path(path)
    obj = _torch_load(path)
    layout, sd, own_cfg, provenance = _unwrap(obj, path, params_key)
    extras = provenance.pop("_extras", {})
    sd, legacy = _normalise_keys(sd, path)
    if legacy:
        layout = "legacy"
    has_branches = any(".conv1x1_3x3." in k for k in sd)
    fused = not has_branches
    if fused and layout == "paper":
        layout = "plain"
    notes: list[str] = []

    found = _infer(sd, path, fused)
    if own_cfg is not None:
        base = dict(own_cfg)
        for k, v in found.items():
            if k in base and base[k] != v and k != "depth_multiplier":
                raise InputError(f"{path}: stored config says {k}={base[k]} but the weights say {v}")
    else:
        base = dict(found)
        cfg_file = config or sidecar_config(path)
        if cfg_file is not None:
            from_yaml = read_yaml_config(Path(cfg_file))
            for k in ("module_nums", "channel_nums", "colors", "scale"):
                if k in from_yaml and from_yaml[k] != found[k]:
                    raise InputError(f"{cfg_file}: {k}={from_yaml[k]} contradicts the weights of {path} ({found[k]})")
            if "act_type" in from_yaml and found.get("act_type") == "prelu" and from_yaml["act_type"] != "prelu":
                raise InputError(f"{cfg_file}: act_type {from_yaml['act_type']!r} but {path} has PReLU weights")
            base.update({k: v for k, v in from_yaml.items() if k in ("act_type", "with_idt", "value_range")})
            if config is None:
                notes.append(f"config read from {cfg_file.name}")
    if act is not None:
        if found.get("act_type") == "prelu" and act != "prelu":
            raise InputError(f"{path}: --act {act} but the checkpoint holds PReLU weights (backbone.0.act.weight)")
        if act == "prelu" and found.get("act_type") != "prelu":
            raise InputError(f"{path}: --act prelu but the checkpoint has no PReLU weights (backbone.0.act.weight)")
        base["act_type"] = act
    if with_idt is not None:
        base["with_idt"] = with_idt
    if value_range is not None:
        base["value_range"] = float(value_range)
    if "act_type" not in base:
        raise InputError(f"{path}: the activation cannot be inferred from the weights (no PReLU); "
                         "pass --act relu|rrelu|softplus|linear or --config with act_type")
    if not fused and "with_idt" not in base:
        if base["module_nums"] == 0:
            base["with_idt"] = False  # no C->C block: the identity never applies
        else:
            raise InputError(f"{path}: whether blocks add the identity cannot be inferred from the weights; "
                             "pass --with-idt or --no-with-idt, or --config with idt_ecbsr")
    if "value_range" not in base:
        base["value_range"] = 1.0 if layout.startswith("basicsr") else 255.0
        notes.append(f"value range {int(base['value_range'])} assumed for the {layout} layout (--value-range to change)")
    cfg = ModelConfig.from_dict(base)
    _check_keys_and_shapes(sd, cfg, path, fused)
    _check_finite(sd, path)
    return Loaded(path, layout, fused, cfg, sd, sha256_of(path), notes, provenance, extras)


def fused_payload(cfg: ModelConfig, plain_sd: dict, *, source: Loaded | None, extras: dict | None = None) -> dict:
    import torch

    prov = {"tool": "ecbconvert", "tool_version": __version__}
    if source is not None:
        prov.update(source=source.path.name, source_sha256=source.sha256, source_layout=source.layout)
    return {
        "format": FUSED_FORMAT,
        "version": 1,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().to(torch.float32).contiguous() for k, v in plain_sd.items()},
        "provenance": prov,
        **(extras or {}),
    }


def _torch_save(obj, path: Path) -> None:
    import torch

    atomic.write_with(path, lambda tmp: torch.save(obj, tmp))


def save_fused(path: Path, cfg: ModelConfig, plain_sd: dict, *, source: Loaded | None, layout: str = "ecbconvert",
               extras: dict | None = None) -> None:
    """Write a fused model: our self-describing file, or a bare PlainSR state_dict (layout='plain')."""
    payload = fused_payload(cfg, plain_sd, source=source, extras=extras)
    _torch_save(payload["state_dict"] if layout == "plain" else payload, path)


def save_trained(model, path: Path) -> None:
    """Paper layout (bare state_dict) + its YAML model config beside it, both atomically."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _torch_save(sd, Path(path))
    atomic.write_text(Path(path).with_suffix(".yml"), config_yaml_text(model.cfg))
