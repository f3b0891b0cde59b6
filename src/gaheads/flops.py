"""Parameter and MAC counts with torch's own FLOP counter (MACs = counted FLOPs / 2, batch 1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> dict[str, int]:
    """Total parameters, and the backbone / head split when the model has them."""
    total = sum(p.numel() for p in model.parameters())
    out = {"total": total}
    if hasattr(model, "backbone") and hasattr(model, "head"):
        out["backbone"] = sum(p.numel() for p in model.backbone.parameters())
        out["heads"] = sum(p.numel() for p in model.head.parameters())
    return out


def math_attention():
    """Run ``F.scaled_dot_product_attention`` as its plain matmul decomposition.

    torch's FLOP counter has a formula only for some of the fused attention kernels, and which
    ones varies between releases (torch 2.14 counts nothing for the CPU flash kernel, 2.15 counts
    it). The math backend computes the same two products, QKᵀ and AV, as batched matmuls, which
    every release counts, so counts do not depend on the torch version.
    """
    return sdpa_kernel(SDPBackend.MATH)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "cpu") -> int:
    """Multiply-accumulates of one forward pass at batch 1, in eval mode (attention included)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_size, device=device)
    try:
        with math_attention(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
