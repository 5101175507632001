"""Images in, model tensors out: `ImageTransform` turns a PIL image, a numpy array or an
image file into the float tensor (3, img_size, img_size) the model expects, and back.

    tf = ImageTransform(64)
    x = tf("photo.jpg")            # (3, 64, 64) float, (pixels / 255 - mean) / std
    tf.inverse(x)                  # (64, 64, 3) uint8, for display

Every input becomes 8-bit RGB first:
    RGB                      as is
    RGBA, LA, PA, or P / L / RGB with a transparent colour
                             composited on `fill` (white by default), as a viewer shows it
    L, 1, P, CMYK, YCbCr     converted by PIL
    I;16 (16-bit grey), I    divided by 257 (65535 -> 255)
    F (32-bit float)         taken as [0, 1] if its maximum is <= 1, else as [0, 255]
Numpy arrays: uint8, uint16 (/ 257), bool, or float in [0, 1]; shape (H, W), (H, W, 1),
(H, W, 3) or (H, W, 4) (RGBA, composited on `fill`).

Resizing (only when the size differs): fit="stretch" (default) resizes to a square with
PIL's antialiased bicubic filter, changing the aspect ratio of non-square images; fit="pad"
keeps the aspect ratio and pads the short side with `fill` (letterbox).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

FITS = ("stretch", "pad")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file; ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} not found")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)  # photos taken sideways stand upright
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image file PIL can read ({e})") from e
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} could not be decoded ({e}); the file may be truncated or "
                         "corrupt") from e


def to_rgb(img: Image.Image, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB (see the module docstring for each mode)."""
    if img.mode in _WIDE_GREY_MODES:
        grey = np.asarray(img).astype(np.float32) / 257
        img = Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8))  # mode L
    elif img.mode == "F":
        grey = np.asarray(img, np.float32)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1 else 1.0
        img = Image.fromarray(np.clip(np.nan_to_num(grey) * scale + 0.5, 0, 255)
                              .astype(np.uint8))  # mode L
    if img.mode in _TRANSPARENT_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*fill, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"cannot convert an image of mode {img.mode!r} to RGB ({e}); "
                         "convert it first (e.g. with PIL's ImageCms for LAB)") from e


def array_to_rgb(arr: np.ndarray, fill: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A numpy image (H, W[, C]) of uint8 / uint16 / bool / float in [0, 1] -> (H, W, 3) uint8."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise ValueError(f"image arrays must have shape (H, W), (H, W, 1), (H, W, 3) or "
                         f"(H, W, 4), got {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257 + 0.5).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError("float image arrays must hold finite values in [0, 1]; scale "
                             "them or pass uint8 pixels")
        arr = (arr * 255 + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"image arrays must be uint8, uint16, bool or float in [0, 1], "
                         f"got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)  # (H, W, 3)
    if arr.shape[2] == 4:
        alpha = arr[..., 3:].astype(np.float32) / 255  # (H, W, 1)
        rgb = arr[..., :3] * alpha + np.asarray(fill, np.float32) * (1 - alpha)
        return (rgb + 0.5).astype(np.uint8)
    return arr


class ImageTransform:
    """Image -> normalised float tensor (3, img_size, img_size); `inverse` undoes it."""

    def __init__(self, img_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 fit: str = "stretch", fill: tuple[int, int, int] = (255, 255, 255)) -> None:
        if not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.img_size, self.fit, self.fill = img_size, fit, tuple(fill)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self) -> str:
        return (f"ImageTransform(img_size={self.img_size}, mean={self.mean.flatten().tolist()}, "
                f"std={self.std.flatten().tolist()}, fit={self.fit!r})")

    def __call__(self, image) -> torch.Tensor:
        """PIL image, numpy array or path -> (3, img_size, img_size) float32."""
        return self.normalize(torch.from_numpy(self.to_array(image)))

    def to_array(self, image) -> np.ndarray:
        """PIL image, numpy array or path -> (img_size, img_size, 3) uint8, resized."""
        if isinstance(image, (str, os.PathLike)):
            image = open_image(image)
        if isinstance(image, np.ndarray):
            arr = array_to_rgb(image, self.fill)
            if arr.shape[:2] == (self.img_size, self.img_size):
                return np.ascontiguousarray(arr)  # the fast path for rendered scenes
            image = Image.fromarray(arr)
        if not isinstance(image, Image.Image):
            raise ValueError(f"expected a PIL image, a numpy array (H, W[, C]) or a path to "
                             f"an image file, got {type(image).__name__}")
        return np.array(self._resize(to_rgb(image, self.fill)))  # a writable copy

    def _resize(self, img: Image.Image) -> Image.Image:
        S = self.img_size
        if img.size == (S, S):
            return img
        if self.fit == "stretch":
            return img.resize((S, S), Image.Resampling.BICUBIC)
        w, h = img.size
        scale = S / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("RGB", (S, S), self.fill)
        canvas.paste(img.resize(new, Image.Resampling.BICUBIC),
                     ((S - new[0]) // 2, (S - new[1]) // 2))
        return canvas

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., H, W, 3) -> normalised float32 (..., 3, H, W)."""
        x = pixels.movedim(-1, -3).float() / 255  # (..., 3, H, W)
        return (x - self.mean) / self.std

    def batch(self, images) -> torch.Tensor:
        """A list of images (or a uint8 array (B, H, W, 3)) -> (B, 3, img_size, img_size)."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.uint8 \
                and images.shape[1:] == (self.img_size, self.img_size, 3):
            return self.normalize(torch.from_numpy(np.ascontiguousarray(images)))
        return torch.stack([self(im) for im in images])

    def inverse(self, x: torch.Tensor) -> np.ndarray:
        """(3, H, W) or (B, 3, H, W) normalised float -> (H, W, 3) or (B, H, W, 3) uint8."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"inverse expects a (3, H, W) or (B, 3, H, W) tensor, got {shape}")
        pixels = (x.detach().float().cpu() * self.std + self.mean) * 255
        return pixels.round().clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()
