"""ImageFolder datasets (ImageNet layout ``<root>/<split>/<class>/*.JPEG``) that survive bad files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import BadImageWarning, DataError
from .images import load_rgb

LAYOUT = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
# Consecutive unreadable files tolerated while looking for a substitute; beyond that the
# folder is more broken than "a few bad files" and we stop.
MAX_CONSECUTIVE_BAD = 64


def check_split_folder(root: str | os.PathLike | None, split: str) -> Path:
    """Return ``<root>/<split>``, or raise DataError saying which part of the layout is missing."""
    if root is None or str(root) == "":
        raise DataError(f"dataset 'imagefolder' needs a data root (expected an ImageFolder: {LAYOUT})")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist (expected an ImageFolder: {LAYOUT})")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder (expected an ImageFolder: {LAYOUT})")
    if not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty (expected an ImageFolder: {LAYOUT})")
    if not split or Path(split).name != split:
        raise DataError(f"split {split!r} is not a folder name (expected an ImageFolder: {LAYOUT})")
    folder = root / split
    if not folder.is_dir() and split == "val" and (root / "validation").is_dir():
        folder = root / "validation"  # timm accepts this spelling too
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist (expected an ImageFolder: {LAYOUT})")
    return folder


class RobustImageFolder(ImageFolder):
    """torchvision's ImageFolder with clear layout errors, RGB conversion and bad-file handling.

    A file that cannot be decoded (corrupt, truncated, zero bytes) is, by default, replaced by
    the next readable sample in index order (deterministic, so batches do not depend on which
    worker met the file first), recorded in ``skipped`` and warned about once (BadImageWarning).
    With ``strict=True`` it raises DataError naming the file instead.

    Items: ``(transform(img) or RGB PIL image, class index)``.
    """

    def __init__(self, folder: str | os.PathLike, transform: Callable | None = None, strict: bool = False) -> None:
        folder = Path(folder)
        has_class = any(e.is_dir() for e in os.scandir(folder))
        if not has_class:
            raise DataError(f"data folder {folder} has no class folders (expected {folder}/<class>/<image files>)")
        # allow_empty: we report empty classes ourselves, all of them, in one line
        super().__init__(str(folder), transform=transform, allow_empty=True)
        counts = torch.bincount(torch.tensor(self.targets, dtype=torch.long), minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts.tolist()) if n == 0]
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DataError(f"class folders without images in {folder}: {shown} "
                            f"(expected image files with extensions {', '.join(IMG_EXTENSIONS)})")
        self.strict = strict
        # Shared memory so that bad files found inside DataLoader workers show up in the main process.
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def skipped(self) -> list[str]:
        """Paths of the files found unreadable so far (in this process or its DataLoader workers)."""
        return [self.samples[i][0] for i in torch.nonzero(self._bad).flatten().tolist()]

    @property
    def num_skipped(self) -> int:
        return int(self._bad.sum())

    @property
    def skipped_mask(self) -> torch.Tensor:
        """(len,) bool, True for the files found unreadable so far (shared with DataLoader workers)."""
        return self._bad

    def _load(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        if self._bad[index]:
            return None
        try:
            img = load_rgb(path)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these three for undecodable files
            if self.strict:
                raise DataError(f"unreadable image {path} ({type(e).__name__}: {e})") from e
            self._bad[index] = True
            warnings.warn(f"skipping unreadable image {path} ({type(e).__name__}: {e}); "
                          "using the next readable sample instead", BadImageWarning, stacklevel=3)
            return None
        return img, target

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for offset in range(min(n, MAX_CONSECUTIVE_BAD)):
            loaded = self._load((index + offset) % n)
            if loaded is not None:
                img, target = loaded
                if self.transform is not None:
                    img = self.transform(img)
                if self.target_transform is not None:
                    target = self.target_transform(target)
                return img, target
        raise DataError(f"{min(n, MAX_CONSECUTIVE_BAD)} consecutive unreadable images starting at "
                        f"{self.samples[index][0]}")
