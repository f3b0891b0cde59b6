"""Using a trained model: read any common image as RGB, preprocess it the checkpoint's way, predict top-k.

``predict(model, images, topk)`` takes image paths, folders, PIL images or preprocessed
tensors and returns one ``Prediction`` per image; an unreadable (or too large) file gives a
Prediction with ``error`` set instead of stopping the batch. Reading and preprocessing are
``gaheads.preprocess``'s (``open_image``/``to_rgb``, then ``eval_transform`` of the model's
resolved data config), the same as validation's, so one image gives one input tensor in both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .preprocess import ImageError, eval_transform, open_image, resolve_data_config, to_rgb

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
ImageInput = str | os.PathLike | Image.Image | torch.Tensor


# Reading and preprocessing live in gaheads.preprocess (one path for every command); these
# names stay importable from here because callers of the inference API use them.
load_image = open_image
model_data_config = resolve_data_config


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


def input_tensors(model: nn.Module, images: ImageInput | Sequence[ImageInput],
                  max_pixels: int | None = None) -> Iterator[tuple[str, torch.Tensor | None, str | None]]:
    """``predict``'s input path: per image (source, its (3, H, W) model input or None, error or None).

    Files go through ``preprocess.open_image`` (``max_pixels``: its pixel limit), PIL images
    through ``preprocess.to_rgb``, both then through the eval transform of the model's data config.
    """
    transform = eval_transform(model_data_config(model))
    for source, item, error in _items(images):
        if error is not None:
            yield source, None, error
        elif isinstance(item, torch.Tensor):
            yield source, item.float(), None
        else:
            try:
                img = open_image(item, max_pixels) if isinstance(item, str) else item
            except ImageError as e:
                yield source, None, str(e)
                continue
            yield source, transform(img), None


@torch.no_grad()
def predict(model: nn.Module, images: ImageInput | Sequence[ImageInput], topk: int = 5, batch_size: int = 32,
            device: torch.device | str | None = None, max_pixels: int | None = None) -> list[Prediction]:
    """Top-k classes of images, one Prediction per image, in input order (folders expanded, sorted).

    images: paths, folders, PIL images (any mode) or preprocessed tensors (3, H, W) / (B, 3, H, W).
    Probabilities are the softmax of the ensemble logits (the mean of the K branch logits).
    Images are read and run ``batch_size`` at a time, so a folder never sits in memory at once.
    ``max_pixels``: files with more pixels are refused (an ``error`` entry); None: PIL's limit.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
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
        for source, tensor, error in input_tensors(model, images, max_pixels):
            pred = Prediction(source, error=error)
            results.append(pred)
            if tensor is None:
                continue
            pending.append((pred, tensor))
            if len(pending) == batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    return results
