"""The model description shared by every command. No torch import here: the CLI reads it too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .errors import InputError

ACTIVATIONS = ("prelu", "relu", "rrelu", "softplus", "linear")
SCALES = (2, 3, 4)

# Aliases for the paper's YAML keys and other codebases' names -> our field names.
_CONFIG_ALIASES = {
    "m_ecbsr": "module_nums",
    "module_nums": "module_nums",
    "c_ecbsr": "channel_nums",
    "channel_nums": "channel_nums",
    "idt_ecbsr": "with_idt",
    "with_idt": "with_idt",
    "act_type": "act_type",
    "scale": "scale",
    "colors": "colors",
    "depth_multiplier": "depth_multiplier",
    "value_range": "value_range",
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an ECBSR / PlainSR network and feed it correctly."""

    module_nums: int
    channel_nums: int
    scale: int
    colors: int = 1
    act_type: str = "prelu"
    with_idt: bool = False
    depth_multiplier: float = 2.0
    value_range: float = 255.0

    def __post_init__(self) -> None:
        if self.act_type not in ACTIVATIONS:
            raise InputError(f"unsupported activation {self.act_type!r}; use one of {', '.join(ACTIVATIONS)}")
        if self.scale not in SCALES:
            raise InputError(f"unsupported scale {self.scale}; ECBSR supports 2, 3 or 4")
        if self.colors not in (1, 3):
            raise InputError(f"unsupported colors {self.colors}; use 1 (Y channel) or 3 (RGB)")
        if self.module_nums < 0 or self.channel_nums < 1:
            raise InputError(f"invalid size M={self.module_nums}, C={self.channel_nums}")
        if self.value_range not in (1.0, 255.0):
            raise InputError(f"unsupported value range {self.value_range}; use 255 or 1")

    @property
    def mid_channels(self) -> int:
        return int(self.channel_nums * self.depth_multiplier)

    @property
    def layer_channels(self) -> list[tuple[int, int]]:
        """(in, out) channels of each 3x3 layer of the backbone."""
        c, m = self.channel_nums, self.module_nums
        return [(self.colors, c)] + [(c, c)] * m + [(c, self.colors * self.scale**2)]

    @property
    def name(self) -> str:
        return f"ecbsr_x{self.scale}_m{self.module_nums}c{self.channel_nums}_{self.act_type}"

    def macs_per_lr_pixel(self) -> int:
        return sum(9 * i * o for i, o in self.layer_channels)

    def macs_per_output_megapixel(self) -> float:
        """Multiply-accumulates of the fused network per megapixel of *output* (HR) image."""
        return self.macs_per_lr_pixel() * 1e6 / self.scale**2

    def check_memory(self, h: int, w: int, *, bytes_per_value: int = 8, what: str = "--input-size") -> None:
        """Refuse, before allocating, an LR size whose activations would not fit in free memory.

        Estimate: the widest layer of the training graph (mid channels, float64 in the gates),
        a few live buffers at once. Generous on purpose: failing early beats the OOM killer.
        """
        import psutil

        widest = max(self.mid_channels, self.channel_nums, self.colors * self.scale**2)
        need = 6 * h * w * widest * bytes_per_value
        free = psutil.virtual_memory().available
        if need > free:
            raise InputError(f"{what} {h}x{w} needs about {need / 2**30:.1f} GiB for activations but "
                             f"{free / 2**30:.1f} GiB is free; use a smaller size")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def with_overrides(self, **kw) -> ModelConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def read_yaml_config(path: Path) -> dict:
    """Model keys from the paper's YAML training config (training keys are ignored)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise InputError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a YAML mapping with model keys such as m_ecbsr, c_ecbsr, act_type")
    out: dict = {}
    for key, value in data.items():
        field = _CONFIG_ALIASES.get(str(key))
        if field is None:
            continue
        if field == "with_idt":
            value = bool(int(value)) if not isinstance(value, bool) else value
        elif field == "act_type":
            value = str(value).lower()
            if value not in ACTIVATIONS:
                raise InputError(f"{path}: act_type {value!r} is not one of {', '.join(ACTIVATIONS)}")
        elif field in ("value_range", "depth_multiplier"):
            value = float(value)
        else:
            value = int(value)
        out[field] = value
    return out


def config_yaml_text(cfg: ModelConfig) -> str:
    """The paper's YAML model keys for cfg (readable by read_yaml_config and the paper's code)."""
    return (
        f"scale: {cfg.scale}\n"
        f"colors: {cfg.colors}\n"
        f"m_ecbsr: {cfg.module_nums}\n"
        f"c_ecbsr: {cfg.channel_nums}\n"
        f"idt_ecbsr: {int(cfg.with_idt)}\n"
        f"act_type: '{cfg.act_type}'\n"
        f"depth_multiplier: {cfg.depth_multiplier}\n"
        f"value_range: {int(cfg.value_range)}\n"
    )
