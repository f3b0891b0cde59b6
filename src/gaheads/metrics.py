"""Accuracy of the ensemble and of every branch, accumulated as counts so ranks can sum them."""

from __future__ import annotations

import torch
import torch.distributed as dist


class BranchAccuracy:
    """Top-1/top-5 of the ensemble (mean of branch logits) and of each branch, plus agreement.

    ``update(logits (B, K, n), target (B,))``; ``all_reduce()`` sums the counts over DDP ranks;
    ``compute()`` gives percentages: ``top1``, ``top5``, ``branch_top1`` and ``branch_top5``
    (lists of K), and ``agreement``: how often all K branches predict the same class.
    Targets may be soft (B, n); their argmax is used.
    """

    def __init__(self, num_branches: int, device: torch.device | str = "cpu", topk: int = 5) -> None:
        self.k, self.topk = num_branches, topk
        # rows: ensemble top1, ensemble top5, branch top1 x K, branch top5 x K, all-agree, samples
        self.counts = torch.zeros(4 + 2 * num_branches, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim == 2:
            logits = logits.unsqueeze(1)
        if target.ndim == 2:
            target = target.argmax(dim=-1)
        logits = logits.float()
        k_top = min(self.topk, logits.shape[-1])
        all_logits = torch.cat([logits.mean(dim=1, keepdim=True), logits], dim=1)  # (B, 1+K, n)
        top = all_logits.topk(k_top, dim=-1).indices  # (B, 1+K, k_top)
        hit = top == target.view(-1, 1, 1)
        top1 = hit[..., 0].sum(0).double()
        topk = hit.any(-1).sum(0).double()
        preds = top[:, 1:, 0]
        agree = (preds == preds[:, :1]).all(dim=1).sum().double()
        c = self.counts
        c[0] += top1[0]
        c[1] += topk[0]
        c[2:2 + self.k] += top1[1:]
        c[2 + self.k:2 + 2 * self.k] += topk[1:]
        c[-2] += agree
        c[-1] += target.shape[0]

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    @property
    def samples(self) -> int:
        return int(self.counts[-1].item())

    def compute(self) -> dict[str, float | list[float]]:
        c = (self.counts / self.counts[-1].clamp(min=1) * 100).tolist()
        k = self.k
        return {"top1": c[0], "top5": c[1], "branch_top1": c[2:2 + k], "branch_top5": c[2 + k:2 + 2 * k],
                "agreement": c[-2]}
