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

from ..preprocess import ImageError, ImageTooLarge, open_image
from .errors import BadImageWarning, DataError, LinkLoopWarning

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


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def scan_class_folders(folder: str | os.PathLike, class_to_idx: dict[str, int],
                       extensions: tuple[str, ...] = IMG_EXTENSIONS) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) of every image under ``folder/<class>/``, following symlinks but never in circles.

    Returns the samples, in torchvision's order (classes sorted; within a class, by folder path
    then file name), and one ``"link -> folder already scanned"`` note per symlinked folder left
    out. Real folders and files come first: a symlinked folder is followed only when it leads
    somewhere no real folder of the split (nor the split folder or one of its parents) is, so
    ``train/cat/loop -> ..`` adds nothing, and no image is counted twice or under another class.
    A file symlink to an image already listed (a real file, or an earlier link) is left out too;
    hard links are separate files to this scan (telling them apart would cost a stat per file).
    """
    folder = Path(folder)
    top = folder.resolve()
    seen_dirs: dict[tuple[int, int], str] = {_identity(os.stat(p)): str(p) for p in (top, *top.parents)}
    class_dirs: dict[tuple[int, int], str] = {}
    for name in sorted(class_to_idx):
        key = _identity(os.stat(folder / name))
        if key in class_dirs:
            raise DataError(f"class folders {class_dirs[key]} and {name} in {folder} are the same folder "
                            "(one is a link to the other); every class needs a folder of its own")
        class_dirs[key] = name
    seen_dirs.update({key: str(folder / name) for key, name in class_dirs.items()})
    # per class: (folder, its real image files, its symlinked ones) and symlinked folders not yet followed
    listed: dict[str, list[tuple[str, list[str], list[str]]]] = {name: [] for name in class_to_idx}
    links: dict[str, list[os.DirEntry]] = {name: [] for name in class_to_idx}

    def walk(name: str, start: str) -> None:
        """Scan ``start`` and its real sub-folders; symlinked sub-folders wait in ``links[name]``."""
        stack = [start]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    entries = list(it)
            except OSError:  # an unreadable sub-folder is passed over, as os.walk does
                continue
            real, linked, subdirs = [], [], []
            for entry in entries:  # d_type answers is_dir / is_symlink: no system call per file
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if entry.is_symlink():
                        links[name].append(entry)
                    else:
                        seen_dirs.setdefault(_identity(entry.stat()), entry.path)
                        subdirs.append(entry.path)
                elif entry.name.lower().endswith(extensions):
                    (linked if entry.is_symlink() else real).append(entry.path)
            real.sort()  # one folder's paths share their prefix: this sorts by file name
            linked.sort()
            listed[name].append((current, real, linked))
            subdirs.sort()
            stack.extend(reversed(subdirs))

    for name in sorted(class_to_idx):  # every real folder first, so links are judged against all of them
        walk(name, str(folder / name))
    left_out: list[str] = []
    for name in sorted(class_to_idx):
        while links[name]:
            pending, links[name] = sorted(links[name], key=lambda e: e.path), []
            for entry in pending:
                key = _identity(entry.stat())
                if key in seen_dirs:
                    left_out.append(f"{entry.path} -> {seen_dirs[key]}")
                    continue
                seen_dirs[key] = entry.path
                walk(name, entry.path)
    any_file_links = any(linked for name in listed for _, _, linked in listed[name])
    # only with file links (rare) are files told apart by identity: a link to a listed file adds nothing
    real_files: set[tuple[int, int]] = set()
    if any_file_links:
        real_files = {_identity(os.stat(p)) for name in listed for _, real, _ in listed[name] for p in real}
    samples: list[tuple[str, int]] = []
    for name in sorted(class_to_idx):
        target = class_to_idx[name]
        for _, real, linked in sorted(listed[name], key=lambda item: item[0]):
            if not linked:
                samples.extend((path, target) for path in real)
                continue
            link_paths = set(linked)
            for path in sorted(real + linked):
                if path in link_paths:
                    try:
                        ident = _identity(os.stat(path))
                    except OSError:  # a dangling link is kept: loading it reports the file as unreadable
                        ident = None
                    if ident in real_files:
                        continue
                    if ident is not None:
                        real_files.add(ident)  # a second link to the same file adds nothing either
                samples.append((path, target))
    return samples, sorted(left_out)


class RobustImageFolder(ImageFolder):
    """torchvision's ImageFolder with clear layout errors, safe folder scanning and bad-file handling.

    Images are read by ``gaheads.preprocess.open_image`` (RGB, EXIF orientation applied), the one
    reader every gaheads command uses. A file that cannot be decoded (corrupt, truncated, zero
    bytes) or has more than ``max_pixels`` pixels (None: PIL's limit) is, by default, replaced by
    the next readable sample in index order (deterministic, so batches do not depend on which
    worker met the file first), recorded in ``skipped`` and warned about once (BadImageWarning).
    With ``strict=True`` it raises DataError naming the file instead. Symlinked folders are
    followed, never in circles (``scan_class_folders``; the ones left out are in ``left_out_links``
    and warned about with LinkLoopWarning). Fewer than two classes is a DataError.

    Items: ``(transform(img) or RGB PIL image, class index)``.
    """

    def __init__(self, folder: str | os.PathLike, transform: Callable | None = None, strict: bool = False,
                 max_pixels: int | None = None) -> None:
        folder = Path(folder)
        with os.scandir(folder) as entries:  # closed even when any() stops early
            has_class = any(e.is_dir() for e in entries)
        if not has_class:
            raise DataError(f"data folder {folder} has no class folders (expected {folder}/<class>/<image files>)")
        self.left_out_links: list[str] = []
        # allow_empty: we report empty classes ourselves, all of them, in one line
        super().__init__(str(folder), transform=transform, allow_empty=True)
        counts = torch.bincount(torch.tensor(self.targets, dtype=torch.long), minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts.tolist()) if n == 0]
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DataError(f"class folders without images in {folder}: {shown} "
                            f"(expected image files with extensions {', '.join(IMG_EXTENSIONS)})")
        if len(self.classes) < 2:
            raise DataError(f"data folder {folder} has one class folder ({self.classes[0]}); a classifier needs "
                            f"at least two (expected {folder}/<class>/<image files>)")
        if self.left_out_links:
            shown = ", ".join(self.left_out_links[:3]) + (f" and {len(self.left_out_links) - 3} more"
                                                          if len(self.left_out_links) > 3 else "")
            warnings.warn(f"{folder}: left out {len(self.left_out_links)} symlinked folder(s) that lead to a folder "
                          f"already scanned (a symlink loop or a second path to the same images): {shown}",
                          LinkLoopWarning, stacklevel=3)
        self.strict = strict
        self.max_pixels = max_pixels
        # Shared memory so that bad files found inside DataLoader workers show up in the main process.
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    def make_dataset(self, directory: str | os.PathLike, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = None, is_valid_file: Callable | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """torchvision's hook for listing samples: ``scan_class_folders`` instead of its loop-blind os.walk."""
        samples, self.left_out_links = scan_class_folders(directory, class_to_idx, extensions or IMG_EXTENSIONS)
        return samples

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
            img = open_image(path, self.max_pixels)
        except ImageTooLarge as e:
            if self.strict:
                raise DataError(f"image too large {path}: {e.detail}") from e
            self._skip(index, f"skipping image too large {path}: {e.detail}")
            return None
        except ImageError as e:
            if self.strict:
                raise DataError(f"unreadable image {path} ({e.detail})") from e
            self._skip(index, f"skipping unreadable image {path} ({e.detail})")
            return None
        return img, target

    def _skip(self, index: int, message: str) -> None:
        self._bad[index] = True
        warnings.warn(f"{message}; using the next readable sample instead", BadImageWarning, stacklevel=4)

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
