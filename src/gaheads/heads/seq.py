"""Sequence-pooling heads: SeqPool (CCT), SeqAttention (SPEC 1.3) and the AT ablation (SPEC 1.4)."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from .class_attention import ClassAttentionBlock
from .common import MultiBranchHead, to_tokens


class SeqPoolWeights(nn.Module):
    """K learned token weightings: w_k = softmax_N(Linear_k(X)); returns w_kᵀX, (B, K, C).

    The K Linear(C -> 1) layers are one Linear(C -> K).
    """

    def __init__(self, dim: int, num_pools: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, num_pools)
        trunc_normal_(self.score.weight, std=0.02)
        nn.init.zeros_(self.score.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        w = self.score(tokens).softmax(dim=1)  # (B, N, K), softmax over tokens
        return torch.einsum("bnk,bnc->bkc", w, tokens)


class SeqPoolHead(MultiBranchHead):
    """CCT's SeqPool head, K branches (CCT itself uses K = 1)."""

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1) -> None:
        super().__init__(dim, num_classes, num_branches)
        self.pooling = SeqPoolWeights(dim, num_branches)

    def pool(self, x: torch.Tensor, return_attn: bool = False):
        z = self.pooling(to_tokens(x)[0])
        return (z, None) if return_attn else z


class SeqAttentionHead(MultiBranchHead):
    """K SeqAttention branches: each branch's SeqPool vector is the query of its class-attention block."""

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1, attn_dim: int | None = None,
                 mlp_groups: int = 2, num_heads: int = 8) -> None:
        super().__init__(dim, num_classes, num_branches)
        self.pooling = SeqPoolWeights(dim, num_branches)
        self.block = ClassAttentionBlock(dim, num_branches, attn_dim or dim // 4, mlp_groups, num_heads)

    def pool(self, x: torch.Tensor, return_attn: bool = False):
        tokens, _ = to_tokens(x)
        return self.block(self.pooling(tokens), tokens, return_attn=return_attn)


class AttentionOnlyHead(MultiBranchHead):
    """AT ablation: one learned token weighting shared by all branches is every branch's query."""

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1, attn_dim: int | None = None,
                 mlp_groups: int = 2, num_heads: int = 8) -> None:
        super().__init__(dim, num_classes, num_branches)
        self.pooling = SeqPoolWeights(dim, 1)
        self.block = ClassAttentionBlock(dim, num_branches, attn_dim or dim // 4, mlp_groups, num_heads)

    def pool(self, x: torch.Tensor, return_attn: bool = False):
        tokens, _ = to_tokens(x)
        query = self.pooling(tokens).expand(-1, self.num_branches, -1)
        return self.block(query, tokens, return_attn=return_attn)
