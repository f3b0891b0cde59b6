"""The multi-head training loss.

    L = Σ_k task(logits_k, y) + λ · Σ_k KL(p̄ ‖ p_k)

p_k = softmax(logits_k); p̄ = softmax(mean_k logits_k), detached; each KL is averaged over
all B × num_classes elements (``kl_div(reduction='mean', log_target=True)``). λ < 0 (the
seeds use −0.8) pushes every branch away from the ensemble. ``task`` is one of timm's
losses. timm has no multi-branch loss; this module only adds the branch sum and the KL term.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from .deprecation import renamed


class LossParts(NamedTuple):
    """The total loss and its two parts (for logging; ``decorrelation`` is Σ_k KL, before λ)."""

    loss: torch.Tensor
    task: torch.Tensor
    decorrelation: torch.Tensor


def create_task_loss(smoothing: float = 0.1, mixup: bool = False, bce: bool = False,
                     bce_target_thresh: float | None = None) -> nn.Module:
    """The task loss as timm's train script picks it.

    bce -> timm BinaryCrossEntropy (label smoothing applied unless mixup supplies soft targets);
    mixup/cutmix -> SoftTargetCrossEntropy; smoothing > 0 -> LabelSmoothingCrossEntropy; else CE.
    """
    if bce:
        return BinaryCrossEntropy(smoothing=0.0 if mixup else smoothing, target_threshold=bce_target_thresh)
    if mixup:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def decorrelation(logits: torch.Tensor) -> torch.Tensor:
    """Σ_k KL(p̄ ‖ p_k) for per-branch logits (B, K, n); p̄ carries no gradient."""
    log_p = logits.float().log_softmax(dim=-1)
    log_mean = logits.detach().float().mean(dim=1, keepdim=True).log_softmax(dim=-1).expand_as(log_p)
    # = kl_div(log_p, log_mean, reduction='mean', log_target=True) per branch, summed over K;
    # written out because torch plans to change what 'mean' means for kl_div
    kl = log_mean.exp() * (log_mean - log_p)  # (B, K, n)
    return kl.mean(dim=(0, 2)).sum()


class MultiBranchLoss(nn.Module):
    """Σ_k task(logits_k, y) + λ Σ_k KL(p̄ ‖ p_k) for per-branch logits (B, K, n).

    ``target`` is class indices (B,) or soft targets (B, n) (mixup/cutmix). The task loss is
    evaluated once on the (B·K, n) stack with the target repeated per branch; a mean over
    B·K times K equals the sum over branches of per-branch means.
    """

    def __init__(self, task_loss: nn.Module | None = None, lam: float = -0.8) -> None:
        super().__init__()
        self.task_loss = task_loss if task_loss is not None else nn.CrossEntropyLoss()
        self.lam = lam

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossParts:
        if logits.ndim == 2:  # a single-branch model's (B, n) output
            logits = logits.unsqueeze(1)
        b, k, n = logits.shape
        rep = target.unsqueeze(1).expand(b, k, *target.shape[1:]).reshape(b * k, *target.shape[1:])
        task = self.task_loss(logits.reshape(b * k, n), rep) * k
        # with one branch p̄ = p_1 and the term is exactly 0; with λ = 0 it is still logged
        decor = decorrelation(logits) if k > 1 else logits.new_zeros((), dtype=torch.float32)
        return LossParts(task + self.lam * decor, task, decor)


__getattr__ = renamed(__name__, {"MultiHeadLoss": "MultiBranchLoss"}, lambda name: globals()[name])
