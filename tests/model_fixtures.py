"""Tiny trained-model stand-ins for the inference tests: a gaheads training checkpoint of a fresh model."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from gaheads.checkpoint import FORMAT, atomic_save, data_config, model_config


def make_checkpoint(path: Path, name: str = "seqattn4_cct_2_3x2_32", class_names: list[str] | None = None,
                    seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """Save a seeded ``name`` model (as many classes as ``class_names``, default 10 digits) as ``path``."""
    class_names = class_names or [str(i) for i in range(10)]
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=len(class_names)).eval()
    atomic_save({"format": FORMAT, "model_config": model_config(model), "model": model.state_dict(),
                 "data_config": data_config(model), "class_names": class_names}, path)
    return path, model
