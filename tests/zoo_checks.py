"""Shared checks for the model-zoo tests (tests/test_zoo_*.py)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from gaheads.flops import count_params
from gaheads.models import MultiBranchModel


def create_on_meta(name: str, via_kwarg: bool = False, **kwargs) -> torch.nn.Module:
    """A registered model built on the meta device (shapes only: no memory, no init cost).

    timm 1.0.16's ViT cannot be: its drop-path schedule reads ``.item()`` of a tensor, which a meta
    tensor has not; timm 1.0.31 can. On such a timm release the test is skipped, saying why.
    ``via_kwarg``: pass ``device="meta"`` to the model, as timm's own tests do, instead of a device context.
    """
    try:
        if via_kwarg:
            return timm.create_model(name, device="meta", **kwargs)
        with torch.device("meta"):
            return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "meta tensors" not in str(e):
            raise
        pytest.skip(f"timm {timm.__version__} cannot build {name} on the meta device ({e})")


def meta_params(name: str, **kwargs) -> int:
    """Parameter count of a registered model, built on the meta device."""
    return count_params(create_on_meta(name, **kwargs))["total"]


def meta_shapes(name: str, **kwargs) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in create_on_meta(name, **kwargs).state_dict().items()}


def forward_backward(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    """Train-mode forward + backward at ``batch`` x 3 x size x size; asserts finite outputs and
    a finite gradient on every parameter. Returns the per-branch logits (or the logits)."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    out = model(x, return_branches=True) if isinstance(model, MultiBranchModel) else model(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    return out


def within(value: float, target: float, tol: float) -> bool:
    return abs(value / target - 1) <= tol
