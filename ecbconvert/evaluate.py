"""PSNR/SSIM on real images with the evaluation protocol (DESIGN.md §6), for any runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images
from .runtimes import Runner


@dataclass
class Score:
    name: str
    psnr: float
    ssim: float


@dataclass
class EvalResult:
    model: str
    variant: str
    scores: list[Score] = field(default_factory=list)

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.scores]))

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.scores]))

    def to_dict(self) -> dict:
        return {"model": self.model, "variant": self.variant, "psnr": self.psnr, "ssim": self.ssim,
                "per_image": [vars(s) for s in self.scores]}


def super_resolve(runner: Runner, lr: np.ndarray) -> np.ndarray:
    """LR image in [0,255] -> SR image in [0,255] (clipped to the pixel range, as any viewer would)."""
    vr = runner.config.value_range
    out = runner.run(images.to_nchw(lr, vr))
    return np.clip(images.from_nchw(out, vr), 0.0, 255.0)


def score(name: str, sr: np.ndarray, hr: np.ndarray, scale: int) -> Score:
    return Score(name, images.psnr(sr, hr, border=scale), images.ssim(sr, hr, border=scale))


def evaluate(runner: Runner, pairs: list[images.Pair], *, keep: dict | None = None) -> EvalResult:
    """Score runner on every pair. keep, if given, collects {image name: SR array}."""
    result = EvalResult(str(runner.path), runner.variant)
    for pair in pairs:
        sr = super_resolve(runner, pair.lr)
        if keep is not None:
            keep[pair.name] = sr
        result.scores.append(score(pair.name, sr, pair.hr, runner.config.scale))
    return result


def bicubic_baseline(pairs: list[images.Pair], scale: int) -> EvalResult:
    result = EvalResult("bicubic", "baseline")
    for pair in pairs:
        up = np.clip(images.bicubic_upscale(pair.lr, scale), 0, 255)
        result.scores.append(score(pair.name, up, pair.hr, scale))
    return result


def run_eval(models, *, images_dir=None, scale: int | None = None, threads: int = 2, save_dir=None,
             load_kwargs: dict | None = None):
    """The `eval` command: score every model on the same pairs; returns (results, text table)."""
    from pathlib import Path

    from .errors import InputError
    from .runtimes import open_runner
    from .tables import table

    runners = [open_runner(Path(m), threads=threads, load_kwargs=load_kwargs) for m in models]
    first = runners[0].config
    for r in runners:
        if scale is not None and r.config.scale != scale:
            raise InputError(f"{r.path}: model scale is {r.config.scale}, not --scale {scale}")
        if (r.config.scale, r.config.colors) != (first.scale, first.colors):
            raise InputError(f"{r.path}: scale/colors {r.config.scale}/{r.config.colors} differ from "
                             f"{runners[0].path} ({first.scale}/{first.colors}); evaluate them separately")
    pairs = images.make_pairs(images_dir, first.scale, first.colors, what="evaluation image folder")
    if save_dir is not None:
        save_dir = Path(save_dir)
        if not save_dir.parent.exists():
            raise InputError(f"{save_dir}: parent folder does not exist")
        save_dir.mkdir(exist_ok=True)
    base = bicubic_baseline(pairs, first.scale)
    results, outputs = [base], []
    for r in runners:
        keep: dict = {}
        results.append(evaluate(r, pairs, keep=keep))
        outputs.append(keep)
    if save_dir is not None:
        save_crops(save_dir, pairs, first.scale, runners, outputs)
    rows = [[f"{r.model} ({r.variant})", f"{r.psnr:.3f}", f"{r.ssim:.4f}", f"{r.psnr - base.psnr:+.3f}"]
            for r in results]
    text = [f"{len(pairs)} image(s), ×{first.scale}, {'Y' if first.colors == 1 else 'RGB'}, "
            f"border {first.scale} px shaved, data range 255", table(rows, ["model", "PSNR dB", "SSIM", "vs bicubic"])]
    per = [[p.name] + [f"{r.scores[i].psnr:.2f}" for r in results] for i, p in enumerate(pairs)]
    text += ["", "per image (PSNR dB):", table(per, ["image"] + [Path(r.model).name for r in results])]
    return results, "\n".join(text)


def save_crops(folder, pairs, scale: int, runners, outputs, crop: int = 96) -> None:
    """One PNG per image: nearest-upsampled LR | bicubic | each model | HR, on a central crop."""
    from PIL import Image

    from . import atomic

    for pair in pairs:
        h, w = pair.hr.shape[:2]
        c = min(crop * scale, h, w)
        y0, x0 = (h - c) // 2 // scale * scale, (w - c) // 2 // scale * scale
        def cut(img, y0=y0, x0=x0, c=c):
            return img[y0 : y0 + c, x0 : x0 + c]

        near = np.kron(pair.lr, np.ones((scale, scale))) if pair.lr.ndim == 2 else \
            pair.lr.repeat(scale, 0).repeat(scale, 1)
        panels = [cut(near), cut(images.bicubic_upscale(pair.lr, scale))]
        panels += [cut(o[pair.name]) for o in outputs] + [cut(pair.hr)]
        strip = np.clip(np.concatenate(panels, axis=1), 0, 255).round().astype(np.uint8)
        out = folder / f"{Path(pair.name).stem}_x{scale}.png"
        atomic.write_with(out, lambda tmp, strip=strip: Image.fromarray(strip).save(tmp, format="PNG"))
