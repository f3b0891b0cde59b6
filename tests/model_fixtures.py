"""Tiny model stand-ins: a gaheads training checkpoint of a fresh model; small head settings; a clean dynamo."""

from __future__ import annotations

from pathlib import Path

import pytest
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


HEAD_KINDS = ["ga", "seqattn", "seqpool", "sg", "at"]


def small_head_kwargs(kind: str) -> dict:
    """Narrow settings of each head kind, for fast tests."""
    gram = dict(gram_dim=16, contraction_groups=4)
    attn = dict(attn_dim=16)
    return {"ga": {**gram, **attn}, "sg": gram, "seqattn": attn, "at": attn, "seqpool": {}}[kind]


@pytest.fixture
def fresh_dynamo():
    """torch.compile's caches emptied before and after a test, so no graph leaks between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
