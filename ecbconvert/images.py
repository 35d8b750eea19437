"""Images and the evaluation protocol (DESIGN.md §6). numpy + Pillow only, no torch.

HR image -> Y (BT.601, as skimage.color.rgb2ycbcr, not rounded) -> crop to a multiple of the
scale -> bicubic downsample (Pillow's antialiased bicubic, as MATLAB imresize) -> model ->
PSNR/SSIM on Y against HR, `scale` pixels shaved at each border, data range 255.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def bundled_dir(split: str) -> Path:
    """The folder of bundled photographs: split is 'train' or 'eval' (see data/images/LICENSES.md)."""
    return Path(str(resources.files("ecbconvert") / "data" / "images" / split))


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """uint8/float RGB in [0,255] -> Y in [16,235] as float64 (skimage rgb2ycbcr, not rounded)."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Inverse of rgb2ycbcr (BT.601, studio range) -> RGB float in [0,255], clipped."""
    y, cb, cr = (np.asarray(a, dtype=np.float64) - o for a, o in ((y, 16), (cb, 128), (cr, 128)))
    r = 255 / 219 * y + 255 / 224 * 1.402 * cr
    g = 255 / 219 * y - 255 / 224 * 1.772 * 0.114 / 0.587 * cb - 255 / 224 * 1.402 * 0.299 / 0.587 * cr
    b = 255 / 219 * y + 255 / 224 * 1.772 * cb
    return np.clip(np.stack([r, g, b], -1), 0, 255)


def read_image(path: Path) -> np.ndarray:
    """An image file as an RGB uint8 array (H, W, 3); grayscale is replicated to three channels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None


def list_images(folder: Path, *, what: str = "image folder") -> list[Path]:
    """Image files of a folder, sorted; error if there is none. Unreadable files are skipped later."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: {what} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} is not a folder")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except PermissionError:
        raise InputError(f"{folder}: {what} cannot be read (permission denied)") from None
    if not files:
        raise InputError(f"{folder}: {what} is empty; put PNG or JPEG photographs in it")
    return files


def load_images(folder: Path, *, what: str = "image folder", min_size: int = 1) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for every readable image of folder; non-images are skipped with a warning."""
    out = []
    for path in list_images(folder, what=what):
        try:
            rgb = read_image(path)
        except InputError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        if min(rgb.shape[:2]) < min_size:
            warnings.warn(f"skipping {path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than {min_size} px", stacklevel=2)
            continue
        out.append((path.name, rgb))
    if not out:
        raise InputError(f"{folder}: {what} holds no readable image at least {min_size} px wide "
                         f"(PNG, JPEG, BMP, TIFF or WebP)")
    return out


def resize_bicubic(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize (antialiased when shrinking) of a float (H, W) or (H, W, C) array."""
    from PIL import Image

    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        return np.asarray(Image.fromarray(img, mode="F").resize((width, height), Image.BICUBIC))
    return np.stack([resize_bicubic(img[..., c], width, height) for c in range(img.shape[-1])], -1)


def crop_to_scale(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """HR (already cropped to a multiple of scale) -> LR by antialiased bicubic downsampling."""
    h, w = hr.shape[:2]
    return resize_bicubic(hr, w // scale, h // scale).astype(np.float64)


@dataclass
class Pair:
    """One evaluation sample: LR and HR in [0,255] float64, (H, W) for Y or (H, W, 3) for RGB."""

    name: str
    lr: np.ndarray
    hr: np.ndarray


def make_pair(name: str, rgb: np.ndarray, scale: int, colors: int) -> Pair:
    if min(rgb.shape[:2]) < 2 * scale:
        raise InputError(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} is too small for scale {scale}")
    hr = rgb_to_y(rgb) if colors == 1 else rgb.astype(np.float64)
    hr = crop_to_scale(hr, scale)
    return Pair(name, degrade(hr, scale), hr)


def make_pairs(folder: Path | None, scale: int, colors: int, *, what: str = "image folder") -> list[Pair]:
    folder = Path(folder) if folder is not None else bundled_dir("eval")
    return [make_pair(n, rgb, scale, colors) for n, rgb in load_images(folder, what=what, min_size=2 * scale)]


def to_nchw(img: np.ndarray, value_range: float) -> np.ndarray:
    """[0,255] image (H,W) or (H,W,C) -> float32 NCHW in the model's value range."""
    img = img[..., None] if img.ndim == 2 else img
    return (np.transpose(img, (2, 0, 1))[None] * (value_range / 255.0)).astype(np.float32)


def from_nchw(x: np.ndarray, value_range: float) -> np.ndarray:
    """Model output NCHW in its value range -> [0,255] float64 image (H,W) or (H,W,C)."""
    img = np.transpose(np.asarray(x, dtype=np.float64)[0], (1, 2, 0)) * (255.0 / value_range)
    return img[..., 0] if img.shape[-1] == 1 else img


def shave(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border else img


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0, border: int = 0) -> float:
    a, b = shave(np.asarray(a, np.float64), border), shave(np.asarray(b, np.float64), border)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0, border: int = 0) -> float:
    """SSIM with an 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, as in Wang et al. 2004."""
    from scipy.ndimage import gaussian_filter

    a, b = shave(np.asarray(a, np.float64), border), shave(np.asarray(b, np.float64), border)
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], data_range=data_range) for c in range(a.shape[-1])]))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda x: gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")  # noqa: E731 - 11-tap window
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    h, w = lr.shape[:2]
    return resize_bicubic(lr, w * scale, h * scale).astype(np.float64)
