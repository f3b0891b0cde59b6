"""Pieces shared by the heads: input layout, K-branch linear layers, the gram vector.

Every head runs its K branches together: each per-branch layer below stores its K weight
sets stacked along a leading branch axis and applies them in one batched matmul, so a
forward pass has no Python loop over branches. The parameter count is exactly that of K
separate layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


def to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Accept a feature map (B, C, H, W) or tokens (B, N, C); return tokens (B, N, C) and (H, W).

    For a token sequence the grid is taken as square when N is a square number, else (1, N);
    the grid only sets the gram vector's pre-scaling, which its L2 normalisation cancels.
    A channels-last map gives tokens without a copy.
    """
    if x.ndim == 4:
        _, _, h, w = x.shape
        return x.flatten(2).transpose(1, 2), (h, w)
    if x.ndim == 3:
        n = x.shape[1]
        side = math.isqrt(n)
        return x, ((side, side) if side * side == n else (1, n))
    raise ValueError(f"heads take a (B, C, H, W) feature map or (B, N, C) tokens, got shape {tuple(x.shape)}")


class BranchLinear(nn.Module):
    """K independent Linear(in_features -> out_features) layers, optionally grouped.

    Input (B, K, in_features) -> (B, K, out_features). With ``groups`` g each branch is a
    grouped 1x1 conv: input group j feeds only output group j (in/g -> out/g weights).
    Weight shape (K, g, out/g, in/g); bias (K, out).
    """

    def __init__(self, in_features: int, out_features: int, num_branches: int, groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"features {in_features}->{out_features} not divisible by groups={groups}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(
            torch.empty(num_branches, groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(num_branches, out_features)) if bias else None
        trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, _ = x.shape
        y = torch.einsum("bkgi,kgoi->bkgo", x.reshape(b, k, self.groups, -1), self.weight)
        y = y.reshape(b, k, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        k = self.weight.shape[0]
        return f"{self.in_features}->{self.out_features}, branches={k}, groups={self.groups}"


class BranchLayerNorm(nn.Module):
    """K LayerNorms over the last dim of (B, K, C), each with its own affine (K, C)."""

    def __init__(self, dim: int, num_branches: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_branches, dim))
        self.bias = nn.Parameter(torch.zeros(num_branches, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


class BranchTokenProjection(nn.Module):
    """K grouped 1x1 convs applied to shared tokens: (B, N, C) -> (B, K, out, N).

    This is the GA contraction (C -> d, groups g): each branch reads the same feature map.
    One batched matmul over the g groups computes all K branches. Weight (K, g, out/g, C/g).
    """

    def __init__(self, in_features: int, out_features: int, num_branches: int, groups: int = 1) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"features {in_features}->{out_features} not divisible by groups={groups}")
        self.groups, self.out_features = groups, out_features
        self.weight = nn.Parameter(
            torch.empty(num_branches, groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(num_branches, out_features))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        k = self.weight.shape[0]
        y = torch.einsum("bngi,kgoi->bkgon", tokens.reshape(b, n, self.groups, -1), self.weight)
        return y.reshape(b, k, self.out_features, n) + self.bias[:, :, None]


def gram_triangle_index(dim: int) -> torch.Tensor:
    """Flat indices of the upper triangle incl. the diagonal of a (dim, dim) matrix, row-major."""
    rows, cols = torch.triu_indices(dim, dim)
    return rows * dim + cols


def gram_vector(xc: torch.Tensor, height: int, tri_index: torch.Tensor) -> torch.Tensor:
    """Normalised gram vector of contracted features, SPEC 1.2 step 3.

    xc: (B, K, d, N) contracted features of each branch; returns (B, K, d(d+1)/2) float32.
    Z = X'/H, G = Z Zᵀ / N; the upper triangle (i <= j, row-major) L2-normalised per sample.
    Always computed in float32, also under autocast: bf16/fp16 squares overflow or lose
    the small entries. Pre-dividing by H keeps 1e4-scale activations far from fp32's range.
    """
    n = xc.shape[-1]
    with torch.autocast(device_type=xc.device.type, enabled=False):
        z = xc.float() / height
        gram = torch.matmul(z, z.transpose(-1, -2)) / n  # (B, K, d, d)
        vec = gram.flatten(-2).index_select(-1, tri_index)  # gather; no second d*d copy
        return F.normalize(vec, dim=-1, eps=1e-12)


def branch_classifier(dim: int, num_classes: int, num_branches: int) -> nn.Module:
    """Per-branch classifier Linear(C -> num_classes); identity (no parameters) when num_classes == 0."""
    return BranchLinear(dim, num_classes, num_branches) if num_classes > 0 else nn.Identity()


class MultiBranchHead(nn.Module):
    """Base of every head: K branches, each producing an embedding (C) then logits.

    Subclasses implement ``pool(x)`` -> (B, K, C) (plus attention weights when asked);
    this class adds the per-branch classifier. ``forward`` returns (B, K, num_classes),
    or the (B, K, C) embeddings with ``pre_logits=True`` / ``num_classes == 0``.
    """

    def __init__(self, dim: int, num_classes: int, num_branches: int) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        self.dim, self.num_classes, self.num_branches = dim, num_classes, num_branches
        self.classifier = branch_classifier(dim, num_classes, num_branches)

    def pool(self, x: torch.Tensor, return_attn: bool = False):
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = branch_classifier(self.dim, num_classes, self.num_branches)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) or (B, N, C) -> (B, K, num_classes) per-branch logits."""
        z = self.pool(x)
        return z if pre_logits else self.classifier(z)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-branch logits and class-attention weights (B, K, heads, 1+N), or None for heads without."""
        z, attn = self.pool(x, return_attn=True)
        return self.classifier(z), attn
