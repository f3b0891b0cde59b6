"""Parameter and MAC counts with torch's own FLOP counter (MACs = counted FLOPs / 2, batch 1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> dict[str, int]:
    """Total parameters, and the backbone / head split when the model has them."""
    total = sum(p.numel() for p in model.parameters())
    out = {"total": total}
    if hasattr(model, "backbone") and hasattr(model, "head"):
        out["backbone"] = sum(p.numel() for p in model.backbone.parameters())
        out["heads"] = sum(p.numel() for p in model.head.parameters())
    return out


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "cpu") -> int:
    """Multiply-accumulates of one forward pass at batch 1, in eval mode."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_size, device=device)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
