"""Using a trained model: read any common image as RGB, preprocess it the checkpoint's way, predict top-k.

``predict(model, images, topk)`` takes image paths, folders, PIL images or preprocessed
tensors and returns one ``Prediction`` per image; an unreadable file gives a Prediction
with ``error`` set instead of stopping the batch. Preprocessing is timm's eval transform
built from ``model.data_config`` (what ``gaheads.load`` attaches), so it matches validation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
ImageInput = str | os.PathLike | Image.Image | torch.Tensor


class ImageError(ValueError):
    """An image file that cannot be read or decoded."""


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    - alpha (RGBA, LA, PA, P with a transparent colour): composited onto ``background``
      (``convert('RGB')`` would expose whatever colour hides under transparent pixels);
    - 16/32-bit grayscale (I;16*, I, F): rescaled to 0..255 (``convert`` would clip at 255);
      I;16 by /257, I and F by their value range (0..1 floats x255, values above 255 as 16-bit);
    - CMYK, YCbCr, LAB, HSV, 1, L, P: PIL's own conversion.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, decode fully, apply the EXIF orientation and convert to RGB; ImageError names the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated or corrupt data fails here, not inside the transform
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def expand_paths(inputs: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str | None]]:
    """Files and folders -> (path, error or None). Folders give their image files, recursively, sorted.

    A named file is always tried (whatever its extension); inside folders only files with
    an image extension are taken. A missing path or a folder without images is an error entry.
    """
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                yield str(p), f"{p}: folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            for f in files:
                yield str(f), None
        elif p.is_file():
            yield str(p), None
        else:
            yield str(p), f"{p}: no such file or folder"


def eval_transform(data_config: dict[str, Any]):
    """timm's eval transform (resize, centre crop, normalise) for a model's ``data_config``."""
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items() if k in keys}
    return create_transform(is_training=False, **cfg)


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """``model.data_config`` when the model came from a checkpoint, else timm's default for it."""
    cfg = getattr(model, "data_config", None)
    if cfg:
        return dict(cfg)
    from .checkpoint import data_config

    return data_config(model)


def class_name(model: nn.Module, index: int) -> str:
    names = getattr(model, "class_names", None)
    return str(names[index]) if names and index < len(names) else str(index)


@dataclass
class Prediction:
    """The top-k of one image: ``classes``/``indices``/``probs`` best first; ``branch_top1`` is
    each branch's own top class. ``error`` is set (and the rest empty) when the image was unreadable."""

    source: str
    classes: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    branch_top1: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.source, "error": self.error}
        return {"image": self.source,
                "topk": [{"class": c, "index": i, "prob": round(p, 6)}
                         for c, i, p in zip(self.classes, self.indices, self.probs)],
                "branch_top1": self.branch_top1}


def _items(images: ImageInput | Sequence[ImageInput]) -> Iterator[tuple[str, Any, str | None]]:
    """Normalise inputs to (source name, PIL image / tensor / path, error)."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]
    elif isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            yield f"<image {i}>", to_rgb(item), None
        elif isinstance(item, torch.Tensor):
            if item.ndim != 3:
                raise ValueError(f"a tensor image must be (3, H, W) preprocessed, got shape {tuple(item.shape)}")
            yield f"<tensor {i}>", item, None
        else:
            for path, error in expand_paths([item]):
                yield path, path, error


@torch.no_grad()
def predict(model: nn.Module, images: ImageInput | Sequence[ImageInput], topk: int = 5, batch_size: int = 32,
            device: torch.device | str | None = None) -> list[Prediction]:
    """Top-k classes of images, one Prediction per image, in input order (folders expanded, sorted).

    images: paths, folders, PIL images (any mode) or preprocessed tensors (3, H, W) / (B, 3, H, W).
    Probabilities are the softmax of the ensemble logits (the mean of the K branch logits).
    Images are read and run ``batch_size`` at a time, so a folder never sits in memory at once.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    transform = eval_transform(model_data_config(model))
    results: list[Prediction] = []
    pending: list[tuple[Prediction, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([t for _, t in pending]).to(device)
        branch_logits = model(x, return_branches=True).float()  # (B, K, n)
        probs = branch_logits.mean(dim=1).softmax(dim=-1)
        top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        branch_idx = branch_logits.argmax(dim=-1)
        for row, (pred, _) in enumerate(pending):
            pred.indices = top.indices[row].tolist()
            pred.probs = top.values[row].tolist()
            pred.classes = [class_name(model, i) for i in pred.indices]
            pred.branch_top1 = [class_name(model, i) for i in branch_idx[row].tolist()]
        pending.clear()

    try:
        for source, item, error in _items(images):
            pred = Prediction(source, error=error)
            results.append(pred)
            if error is not None:
                continue
            if isinstance(item, torch.Tensor):
                tensor = item.float()
            else:
                try:
                    img = load_image(item) if isinstance(item, str) else item
                except ImageError as e:
                    pred.error = str(e)
                    continue
                tensor = transform(img)
            pending.append((pred, tensor))
            if len(pending) == batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    return results
