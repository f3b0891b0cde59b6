"""Tiny generated datasets for the data tests (ImageFolder tree, CIFAR-100 python pickles), and a fast run's flags."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: int = 12, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def make_imagefolder(root: Path, classes=("cat", "dog"), per_class: int = 3, splits=("train", "val")) -> Path:
    """``root/<split>/<class>/<i>.png``, random 12x12 RGB images."""
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", seed=100 * s + 10 * c + i)
    return root


def make_cifar100(root: Path, n_train: int = 6, n_test: int = 4, n_classes: int = 5, seed: int = 0) -> dict:
    """``root/cifar-100-python/{meta,train,test}`` holding random images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, n_classes, n).tolist()
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * n}, f)
        written[split] = (data, labels)
    names = [f"class{i}" for i in range(n_classes)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["all"]}, f)
    written["names"] = names
    return written


def fast_train_flags(out: Path, *extra: str) -> list[str]:
    """A 1-epoch CCT-2 run into ``out``, batch 2, no augmentation that costs time."""
    return ["--model", "cct_2_3x2_32", "--epochs", "1", "-b", "2", "--workers", "0", "--no-progress",
            "--aug-repeats", "0", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--output", str(out), *extra]


def error_line(capsys) -> str:
    """What a command printed to stderr, checked to be one line (no traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")
