"""Sequence-pooling heads: SeqPool (CCT), SeqAttention and the AT ablation of the GA paper."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import register_notrace_module
from torch import nn

from .class_attention import ClassAttentionBlock
from .common import MultiBranchHead, to_tokens

# torch.fx: keep to_tokens (it branches on the input rank) a leaf where the heads call it
torch.fx.wrap("to_tokens")


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

    def pool_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.pooling(to_tokens(x)[0]), None


class SeqAttentionHead(MultiBranchHead):
    """K SeqAttention branches: each branch's SeqPool vector is the query of its class-attention block."""

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1, attn_dim: int | None = None,
                 mlp_groups: int = 2, num_heads: int = 8) -> None:
        super().__init__(dim, num_classes, num_branches)
        self.pooling = SeqPoolWeights(dim, num_branches)
        self.block = ClassAttentionBlock(dim, num_branches, attn_dim or dim // 4, mlp_groups, num_heads)

    def pool_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, _ = to_tokens(x)
        q, attn = self.block(self.pooling(tokens), tokens)
        return q, attn


@register_notrace_module  # checks the token count: an FX leaf
class TokenAxisQuery(nn.Module):
    """The released AT ablation's query: Linear(N -> width) over the token axis, then the mean of its outputs.

    tokens (B, N, C) -> (B, 1, C). As the research code does it, the Linear acts on Xᵀ (B, C, N),
    so the query is a fixed positional weighting of the tokens, the mean of the Linear's rows, plus
    one scalar bias (the mean of its biases): content plays no part. The weight (width, N) and bias
    (width) are kept as released (N·width + width parameters; 32,896 for N = 256, width 128) so
    release checkpoints load; only their means are used.
    """

    def __init__(self, num_tokens: int, width: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(num_tokens, width)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.fc.in_features:
            raise ValueError(f"the AT token-axis query was built for {self.fc.in_features} tokens, "
                             f"got {tokens.shape[1]}")
        w = self.fc.weight.mean(dim=0)  # (N,): mean over outputs commutes with the Linear
        return (torch.einsum("bnc,n->bc", tokens, w) + self.fc.bias.mean())[:, None]


AT_QUERIES = ("token_linear", "softmax")


class AttentionOnlyHead(MultiBranchHead):
    """AT ablation: one learned token weighting shared by all branches is every branch's query.

    ``query``: ``"token_linear"`` — the released query (:class:`TokenAxisQuery`, needs ``num_tokens``) —
    or ``"softmax"``, a content-dependent SeqPool weighting softmax_N(Linear(C -> 1)(X)).
    """

    def __init__(self, dim: int, num_classes: int, num_branches: int = 1, attn_dim: int | None = None,
                 mlp_groups: int = 2, num_heads: int = 8, query: str = "softmax",
                 num_tokens: int | None = None) -> None:
        super().__init__(dim, num_classes, num_branches)
        if query not in AT_QUERIES:
            raise ValueError(f"AT query must be one of {list(AT_QUERIES)}, got {query!r}")
        if query == "token_linear":
            if not num_tokens:
                raise ValueError("the token_linear AT query needs num_tokens (the backbone's token count)")
        # the unused one is a parameter-free Identity: both attributes exist (TorchScript), keys stay as they were
        self.token_query = TokenAxisQuery(num_tokens) if query == "token_linear" else nn.Identity()
        self.pooling = SeqPoolWeights(dim, 1) if query == "softmax" else nn.Identity()
        self.query_kind = query
        self.block = ClassAttentionBlock(dim, num_branches, attn_dim or dim // 4, mlp_groups, num_heads)

    def pool_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, _ = to_tokens(x)
        query = self.token_query(tokens) if self.query_kind == "token_linear" else self.pooling(tokens)
        q, attn = self.block(query.expand(-1, self.num_branches, -1), tokens)
        return q, attn
