"""Gramian attention (GA) head and its SG ablation ("simple gram")."""

from __future__ import annotations

import torch
from torch import nn

from .class_attention import ClassAttentionBlock
from .common import BranchLinear, BranchTokenProjection, MultiBranchHead, gram_triangle_index, gram_vector, to_tokens

# torch.fx: keep to_tokens (it branches on the input rank) a leaf where the heads call it
torch.fx.wrap("to_tokens")


class GramEmbedding(nn.Module):
    """GA steps 1, 3, 4 for K branches: tokens -> gram vector -> query embedding (B, K, C).

    1. contraction: 1x1 conv C -> d (groups g, bias) + BN(d);
       optionally a ``gram_layer`` taking and returning (B, K, d, H, W)
    3. gram vector of the contracted map, d(d+1)/2 values, float32, L2-normalised
    4. embedding: 1x1 conv d(d+1)/2 -> C (groups 8, bias) + BN(C)
    """

    def __init__(self, dim: int, num_branches: int, gram_dim: int = 64, contraction_groups: int = 8,
                 embed_groups: int = 8, gram_layer: nn.Module | None = None) -> None:
        super().__init__()
        k, d = num_branches, gram_dim
        tri = d * (d + 1) // 2
        self.gram_dim = d
        self.contract = BranchTokenProjection(dim, d, k, groups=contraction_groups)
        self.contract_bn = nn.BatchNorm1d(k * d)  # = K BatchNorm2d(d): BN is per channel
        self.gram_layer = gram_layer
        self.embed = BranchLinear(tri, dim, k, groups=embed_groups)
        self.embed_bn = nn.BatchNorm1d(k * dim)
        self.register_buffer("tri_index", gram_triangle_index(d), persistent=False)

    def gram(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """tokens (B, N, C) -> normalised gram vectors (B, K, d(d+1)/2), float32."""
        b, n, _ = tokens.shape
        xc = self.contract(tokens)  # (B, K, d, N)
        k = xc.shape[1]
        xc = self.contract_bn(xc.reshape(b, -1, n)).view(b, k, self.gram_dim, n)
        if self.gram_layer is not None:
            xc = self.gram_layer(xc.unflatten(-1, hw)).flatten(-2)
        return gram_vector(xc, hw[0], self.tri_index)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b = tokens.shape[0]
        g = self.gram(tokens, hw).to(tokens.dtype)
        q = self.embed(g)  # (B, K, C)
        return self.embed_bn(q.reshape(b, -1)).view_as(q)


class GramAttentionHead(MultiBranchHead):
    """K Gramian-attention branches: gram-vector query -> class attention over X -> classifier.

    Input (B, C, H, W) or (B, N, C); output (B, K, num_classes).
    CCT defaults: d = 64, contraction groups 8, e = C/4, m = 2.
    """

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1, gram_dim: int = 64,
                 contraction_groups: int = 8, embed_groups: int = 8, attn_dim: int | None = None,
                 mlp_groups: int = 2, num_heads: int = 8, gram_layer: nn.Module | None = None) -> None:
        super().__init__(dim, num_classes, num_branches)
        self.query = GramEmbedding(dim, num_branches, gram_dim, contraction_groups, embed_groups, gram_layer)
        self.block = ClassAttentionBlock(dim, num_branches, attn_dim or dim // 4, mlp_groups, num_heads)

    def pool_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, hw = to_tokens(x)
        q, attn = self.block(self.query(tokens, hw), tokens)
        return q, attn


class SimpleGramHead(MultiBranchHead):
    """SG ablation: the gram-vector embedding goes straight to the classifier, no attention."""

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1, gram_dim: int = 64,
                 contraction_groups: int = 8, embed_groups: int = 8, gram_layer: nn.Module | None = None) -> None:
        super().__init__(dim, num_classes, num_branches)
        self.query = GramEmbedding(dim, num_branches, gram_dim, contraction_groups, embed_groups, gram_layer)

    def pool_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, hw = to_tokens(x)
        return self.query(tokens, hw), None
