"""The model contract shared by every gaheads model: a backbone, a K-branch head, timm-style methods."""

from __future__ import annotations

import torch
from torch import nn

from ..heads import ClassAttentionBlock, MultiBranchHead
from ..heads.common import BranchLayerNorm


class MultiHeadModel(nn.Module):
    """A backbone whose features feed a K-branch head.

    - ``forward_features(x)``: the backbone's tokens (B, N, C) or map (B, C, H, W)
    - ``forward_heads(x)``: per-branch logits (B, K, num_classes)
    - ``forward_head(features, pre_logits=False)``: ensemble logits (B, num_classes) — the
      mean of the branches — or with ``pre_logits`` the mean branch embedding (B, C)
    - ``forward(x)``: ensemble logits; ``forward(x, return_branches=True)``: per-branch
      logits, which is what training uses (DDP only sees calls to ``forward``)
    """

    def __init__(self, backbone: nn.Module, head: MultiBranchHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = head.dim

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def num_branches(self) -> int:
        return self.head.num_branches

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        self.head.reset_classifier(num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters that are 1-D per branch (norm weights, LayerScale) plus the backbone's own."""
        names = {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", lambda: ())()}
        for mod_name, mod in self.named_modules():
            if isinstance(mod, BranchLayerNorm):
                names.add(f"{mod_name}.weight")
            elif isinstance(mod, ClassAttentionBlock):
                names |= {f"{mod_name}.gamma1", f"{mod_name}.gamma2"}
        return names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits).mean(dim=1)

    def forward_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> per-branch logits (B, K, num_classes)."""
        return self.head(self.forward_features(x))

    def forward(self, x: torch.Tensor, return_branches: bool = False) -> torch.Tensor:
        logits = self.forward_heads(x)
        return logits if return_branches else logits.mean(dim=1)

    def predict(self, images, topk: int = 5, batch_size: int = 32) -> list:
        """Top-k classes of image paths, folders, PIL images or tensors; see ``gaheads.inference.predict``."""
        from ..inference import predict

        return predict(self, images, topk=topk, batch_size=batch_size)
