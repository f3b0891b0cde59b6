"""Opening image files as RGB PIL images, whatever their mode."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as an 8-bit RGB image.

    PIL's ``convert("RGB")`` clips 16/32-bit integer images to 255 instead of rescaling them
    (a 16-bit PNG would come out nearly white), so those are rescaled here first.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # 'I', 'I;16', 'I;16B', ...: 16-bit samples (PNG/TIFF)
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":  # float images: assume the 0..1 range when they fit in it, else 0..255
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        arr = np.nan_to_num(np.clip(np.rint(arr * scale), 0, 255)).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency must go through RGBA (PIL warns otherwise)
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode ``path`` (so a truncated file fails here, not later in a transform)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
        return to_rgb(img)
