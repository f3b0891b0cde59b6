"""CIFAR-100, python version: ``<root>/cifar-100-python/{meta,train,test}``.

Written here rather than taken from torchvision because torchvision's CIFAR100 accepts only
the official files (md5-checked) and reports any other problem as "not found or corrupted";
we want to name the broken file and the broken field.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import ArrayImageDataset
from .errors import DataError

FOLDER = "cifar-100-python"
LAYOUT = f"<root>/{FOLDER}/{{meta,train,test}} (the python version of CIFAR-100)"
SPLIT_FILES = {"train": "train", "val": "test"}


def find_cifar_folder(root: str | os.PathLike | None) -> Path:
    """``<root>/cifar-100-python``, or ``root`` itself when it already is that folder."""
    if root is None or str(root) == "":
        raise DataError(f"dataset 'cifar100' needs a data root (expected {LAYOUT})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (expected {LAYOUT})")
    if not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty (expected {LAYOUT})")
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if root.name == FOLDER or any((root / name).is_file() for name in ("meta", "train", "test")):
        return root
    if (root / f"{FOLDER}.tar.gz").exists():
        raise DataError(f"{root / (FOLDER + '.tar.gz')} is not extracted (run: tar xzf {FOLDER}.tar.gz in {root}; "
                        f"expected {LAYOUT})")
    raise DataError(f"no {FOLDER} folder in {root} (expected {LAYOUT})")


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"CIFAR-100 file {path} is missing (expected {LAYOUT})")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated/garbled pickles raise EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"CIFAR-100 file {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-100 file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _field(obj: dict[str, Any], key: str, path: Path) -> Any:
    if key not in obj:
        raise DataError(f"CIFAR-100 file {path} has no '{key}' entry (keys: {', '.join(map(str, obj))})")
    return obj[key]


def read_cifar100(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, 32, 32, 3) uint8 RGB, fine labels (N,) int64 and the 100 fine class names."""
    meta_path = folder / "meta"
    names = [str(n) for n in _field(_unpickle(meta_path), "fine_label_names", meta_path)]
    path = folder / SPLIT_FILES[split]
    obj = _unpickle(path)
    data = np.asarray(_field(obj, "data", path))
    labels = np.asarray(_field(obj, "fine_labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-100 file {path}: 'data' is {data.dtype} {tuple(data.shape)}, "
                        "expected uint8 N x 3072 (1024 red, 1024 green, 1024 blue)")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"CIFAR-100 file {path}: 'fine_labels' has shape {tuple(labels.shape)}, "
                        f"expected {data.shape[0]} integers (one per image)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"CIFAR-100 file {path}: labels span {labels.min()}..{labels.max()} "
                        f"but {meta_path} names {len(names)} classes")
    # rows are planar (R plane, G plane, B plane), each plane row-major 32x32 -> HWC
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64), names


class Cifar100(ArrayImageDataset):
    """CIFAR-100 held in memory; split 'train' reads ``train``, 'val' reads ``test``.

    Items: ``(transform(img) or 32x32 RGB PIL image, fine label)``.
    """

    def __init__(self, root: str | os.PathLike | None, split: str, transform: Callable | None = None) -> None:
        self.folder = find_cifar_folder(root)
        self.images, labels, self.classes = read_cifar100(self.folder, split)
        self.targets = labels.tolist()
        self.transform = transform
