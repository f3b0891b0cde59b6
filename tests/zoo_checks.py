"""Shared checks for the model-zoo tests (tests/test_zoo_*.py)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from gaheads.flops import count_params
from gaheads.models import MultiHeadModel


def meta_params(name: str, **kwargs) -> int:
    """Parameter count of a registered model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_params(timm.create_model(name, **kwargs))["total"]


def meta_shapes(name: str, **kwargs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in timm.create_model(name, **kwargs).state_dict().items()}


def forward_backward(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    """Train-mode forward + backward at ``batch`` x 3 x size x size; asserts finite outputs and
    a finite gradient on every parameter. Returns the per-branch logits (or the logits)."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    out = model(x, return_branches=True) if isinstance(model, MultiHeadModel) else model(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    return out


def within(value: float, target: float, tol: float) -> bool:
    return abs(value / target - 1) <= tol
