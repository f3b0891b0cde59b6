"""The one way an image becomes model input: read it, make it RGB, resolve the data config, build the eval transform.

Training, validation, ``predict``, ``explain`` and the export checks all go through here, so one
image gives one input tensor whichever command reads it.

- ``open_image(path, max_pixels)``: open, decode fully, refuse images over the pixel limit,
  then ``to_rgb``. Problems raise ``ImageError`` (``ImageTooLarge`` for the pixel limit), one line
  naming the file.
- ``to_rgb(img)``: any PIL image -> 8-bit RGB with its EXIF orientation applied (rules below).
- ``resolve_data_config(model or name, overrides)``: input_size, mean, std, crop_pct,
  interpolation, crop_mode (lists, JSON-safe) — from a loaded model's ``data_config``, else
  timm's pretrained cfg of the model or model name, with non-None ``overrides`` on top.
- ``eval_transform(data_config)``: timm's eval transform (resize, centre crop, to tensor,
  normalise) for that config: PIL RGB image -> (3, H, W) float tensor.

Mode rules of ``to_rgb`` (``BACKGROUND`` is white, (255, 255, 255)):

- transparency (RGBA, LA, PA, La, RGBa, and P/L/RGB with a ``transparency`` entry): composited
  over ``BACKGROUND``; a fully transparent pixel becomes white whatever colour it hides;
- ``I;16`` (16-bit): value / 257, rounded (65535 -> 255);
- ``I`` (32-bit integer): taken as 8-bit when every value fits 0..255, else as 16-bit (/ 257);
  negative values clip to 0, values over 65535 to 255;
- ``F`` (float): taken as 0..1 when every value is <= 1 (x 255), else as 0..255; NaN -> 0; clipped;
- ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's own conversion (``1`` gives 0/255).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

BACKGROUND = (255, 255, 255)
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode")
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_TIMM_OVERRIDES = ("img_size", "input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode")


class ImageError(ValueError):
    """An image file that cannot be read (``path``: the file; ``detail``: why, e.g. ``OSError: ...``)."""

    def __init__(self, path: str | os.PathLike, detail: str, message: str | None = None) -> None:
        self.path, self.detail = str(path), detail
        super().__init__(message or f"{path}: cannot read image ({detail})")


class ImageTooLarge(ImageError):
    """An image with more pixels than the limit (PIL's decompression-bomb guard, or ``max_pixels``)."""

    def __init__(self, path: str | os.PathLike, size: tuple[int, int] | None, limit: int | None) -> None:
        if size is not None and limit:
            detail = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, over the limit of {limit:,}"
        else:  # PIL refused it inside Image.open, before its size could be read
            detail = f"over twice PIL's limit of {Image.MAX_IMAGE_PIXELS or 0:,} pixels"
        detail += "; raise the limit with --max-image-pixels"
        self.size, self.limit = size, limit
        super().__init__(path, detail, f"{path}: image too large: {detail}")


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The limit in force: ``max_pixels`` when given (0: none), else PIL's ``Image.MAX_IMAGE_PIXELS``."""
    if max_pixels is None:
        return Image.MAX_IMAGE_PIXELS or None
    return int(max_pixels) or None


def set_pil_pixel_limit(max_pixels: int) -> None:
    """Process-wide: PIL's decompression-bomb limit becomes ``max_pixels`` (0: none) and its warning near
    the limit is silenced (gaheads names each refused image itself). For command entry points only
    (``--max-image-pixels``); library code never calls it, it passes ``max_pixels`` instead."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels) or None
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def apply_exif_orientation(img: Image.Image) -> Image.Image:
    """``img`` turned upright as its EXIF Orientation tag says (itself, uncopied, when there is nothing to do)."""
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not lose the image; it is then shown as stored
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    """(H, W) float values already on the 0..255 scale -> RGB (rounded, clipped, NaN -> 0)."""
    arr = np.nan_to_num(np.rint(values), nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any PIL image -> 8-bit RGB, EXIF orientation applied (the module docstring gives the per-mode rules)."""
    img = apply_exif_orientation(img)
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT:
        return _gray_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if mode == "I":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
        return _gray_to_rgb(arr)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return _gray_to_rgb(arr)
    if mode in _ALPHA_MODES or img.has_transparency_data:
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # PIL has no direct La -> RGBA
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` (a truncated file fails here, not in a transform) -> ``to_rgb``.

    ``max_pixels``: refuse images with more pixels (None: PIL's ``Image.MAX_IMAGE_PIXELS``; 0: no
    limit). Raises ``ImageTooLarge`` over the limit, ``ImageError`` for anything unreadable.
    """
    limit = pixel_limit(max_pixels)
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            if limit and img.size[0] * img.size[1] > limit:
                raise ImageTooLarge(path, img.size, limit)
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as e:  # over twice PIL's own limit: refused inside Image.open
        raise ImageTooLarge(path, None, None) from e
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for missing, corrupt or truncated files
        raise ImageError(path, f"{type(e).__name__}: {e}") from e


def resolve_data_config(model: nn.Module | Mapping[str, Any] | None = None,
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A model's preprocessing: {input_size, mean, std, crop_pct, interpolation, crop_mode}, lists not tuples.

    The base is, first found: ``model.data_config`` (a model loaded from a checkpoint); the timm
    pretrained cfg of ``model`` (an instance); ``model`` itself when it is a mapping (a stored
    data config, or the pretrained cfg of a model not built yet, as
    ``models.ga_timm.model_pretrained_cfg(name)`` gives it); else timm's defaults. ``overrides``
    (keys img_size, input_size, mean, std, crop_pct, interpolation, crop_mode; None values
    ignored) replace the base's values.
    """
    from timm.data import resolve_data_config as timm_resolve

    unknown = sorted(set(overrides or {}) - set(_TIMM_OVERRIDES))
    if unknown:
        raise ValueError(f"unknown data config override(s) {', '.join(unknown)} "
                         f"(expected {', '.join(_TIMM_OVERRIDES)})")
    # every key present (None: keep the base's): timm refuses an empty args dict without a cfg or model
    args = {k: None for k in _TIMM_OVERRIDES} | dict(overrides or {})
    stored = getattr(model, "data_config", None) if isinstance(model, nn.Module) else None
    if stored:
        cfg = timm_resolve(args, pretrained_cfg=dict(stored))
    elif isinstance(model, nn.Module):
        cfg = timm_resolve(args, model=model)
    else:
        cfg = timm_resolve(args, pretrained_cfg=dict(model) if model is not None else None)
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


def eval_transform(data_config: Mapping[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for ``data_config``: RGB PIL image -> (3, H, W) normalised float tensor.

    Resize (shorter side to input size / crop_pct), centre crop to input size, to tensor, normalise.
    """
    from timm.data import create_transform

    if "input_size" not in data_config:
        raise ValueError(f"data config has no input_size (expected keys {', '.join(DATA_CONFIG_KEYS)})")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()
              if k in DATA_CONFIG_KEYS and v is not None}
    return create_transform(is_training=False, **kwargs)


def model_input(img: Image.Image, data_config: Mapping[str, Any],
                transform: Callable[[Image.Image], torch.Tensor] | None = None) -> torch.Tensor:
    """One PIL image (any mode) -> its (3, H, W) model input; pass ``transform`` to reuse a built one."""
    return (transform or eval_transform(data_config))(to_rgb(img))
