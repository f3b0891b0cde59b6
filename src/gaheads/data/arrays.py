"""Datasets held in memory as one uint8 array: CIFAR-100 and the MNIST subset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class ArrayImageDataset(Dataset):
    """``images`` (N, H, W, 3) uint8 and ``targets`` (N ints); items are (transform(PIL RGB image), target)."""

    images: np.ndarray
    targets: list[int]
    classes: list[str]
    transform: Callable | None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
