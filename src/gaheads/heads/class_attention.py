"""K-branch LayerScale class-attention block (CaiT).

Per branch k, with query token q_k (B, 1, C) and the shared tokens X (B, N, C):
    u   = concat(q_k, X)                                   (B, 1+N, C)
    q_k = q_k + γ1_k · CA_k(LN1_k(u))                        query from u[0], keys/values from all of u
    q_k = q_k + γ2_k · MLP_k(LN2_k(q_k))                     grouped 1x1 convs + channel shuffle
All K branches run as batched matmuls over stacked weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_notrace_module
from torch import nn

from .common import BranchLayerNorm, BranchLinear, token_linear


@register_notrace_module  # device-dependent fast path (``token_linear``): an FX leaf
class ClassAttentionBlock(nn.Module):
    """K independent class-attention blocks sharing one token sequence.

    Args:
        dim: token width C.
        num_branches: K.
        attn_dim: e, the q/k/v width (split over ``num_heads`` attention heads).
        mlp_groups: m, groups of the MLP's 1x1 convs and of the channel shuffle.
        num_heads: attention heads (8 in both papers).
        mlp_ratio: hidden width of the MLP as a multiple of C (4).
        ls_init: initial LayerScale γ1, γ2.
    """

    def __init__(self, dim: int, num_branches: int, attn_dim: int, mlp_groups: int, num_heads: int = 8,
                 mlp_ratio: int = 4, ls_init: float = 1e-4, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim {attn_dim} not divisible by num_heads {num_heads}")
        k, hidden = num_branches, dim * mlp_ratio
        self.num_heads, self.attn_dim, self.mlp_groups = num_heads, attn_dim, mlp_groups
        self.scale = (attn_dim // num_heads) ** -0.5
        self.norm1 = BranchLayerNorm(dim, k, norm_eps)
        self.q = nn.Parameter(torch.empty(k, dim, attn_dim))
        self.kv = nn.Parameter(torch.empty(k, dim, 2 * attn_dim))
        self.proj = BranchLinear(attn_dim, dim, k)
        self.gamma1 = nn.Parameter(torch.full((k, dim), ls_init))
        self.norm2 = BranchLayerNorm(dim, k, norm_eps)
        self.fc1 = BranchLinear(dim, hidden, k, groups=mlp_groups)
        self.fc2 = BranchLinear(hidden, dim, k, groups=mlp_groups)
        self.gamma2 = nn.Parameter(torch.full((k, dim), ls_init))
        self.cpu_convolutions = True  # the 1x1-convolution fast path for the keys/values on CPU
        trunc_normal_(self.q, std=0.02)
        trunc_normal_(self.kv, std=0.02)

    def attention(self, q: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CA_k(LN1_k(concat(q_k, X))) for all k.

        q: (B, K, C) query tokens, x: (B, N, C) shared tokens.
        Returns the attention output (B, K, C) and the weights (B, K, heads, 1+N), whose
        first column is the query token's attention to itself.
        """
        b, n, c = x.shape
        k, h, e = q.shape[1], self.num_heads, self.attn_dim
        # LN1_k(u) = û·w_k + b_k, where û = LN(u) without affine is the same for every branch, so
        # key/value_k = û·(w_k W_k) + b_k W_k. The key bias b_k W_k is shared by all 1+N keys and
        # cancels in the softmax; the value bias comes out once (the weights sum to 1). What is
        # left is one bias-free GEMM (B·N, C) x (C, K·2e) for every branch's keys and values, whose
        # output keeps the GEMM's (B, N, K, ...) order.
        kv_w = self.norm1.weight[:, :, None] * self.kv  # (K, C, 2e)
        v_bias = torch.einsum("kc,kce->ke", self.norm1.bias, self.kv[..., e:])  # (K, e)
        x_hat = F.layer_norm(x, (c,), eps=self.norm1.eps)
        kv_tok = token_linear(x_hat, kv_w.permute(0, 2, 1).reshape(k * 2 * e, c), self.cpu_convolutions)  # (B, N, K·2e)
        k_tok, v_tok = kv_tok.view(b, n, k, 2, h, e // h).unbind(3)  # (B, N, K, h, e/h)

        q_hat = F.layer_norm(q, (c,), eps=self.norm1.eps)  # the query token is the first row of u
        query = torch.einsum("bkc,kce->bke", torch.addcmul(self.norm1.bias, q_hat, self.norm1.weight), self.q)
        query = query.view(b, k, h, e // h) * self.scale
        k_q, v_q = torch.einsum("bkc,kcf->bkf", q_hat, kv_w).view(b, k, 2, h, e // h).unbind(2)

        # softmax over the 1+N keys of u = [q, X], without concatenating the (B, N, K, e) keys
        scores = torch.cat([(query * k_q).sum(-1, keepdim=True),
                            torch.einsum("bkhd,bnkhd->bkhn", query, k_tok)], dim=-1)
        attn = scores.softmax(dim=-1)  # (B, K, h, 1+N)
        out = attn[..., :1] * v_q + torch.einsum("bkhn,bnkhd->bkhd", attn[..., 1:], v_tok)
        return self.proj(out.reshape(b, k, e) + v_bias), attn

    def mlp(self, q: torch.Tensor) -> torch.Tensor:
        """MLP_k(LN2_k(q_k)): grouped 1x1 conv C->4C, GELU, channel shuffle, grouped 4C->C."""
        b, k, _ = q.shape
        y = F.gelu(self.fc1(self.norm2(q)))
        # shuffle: view the 4C channels as (4C/m, m), transpose to (m, 4C/m), flatten
        y = y.view(b, k, -1, self.mlp_groups).transpose(-1, -2).reshape(b, k, -1)
        return self.fc2(y)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (B, K, C) query tokens, x: (B, N, C) tokens -> updated queries (B, K, C) and the
        attention weights (B, K, heads, 1+N)."""
        attn_out, attn = self.attention(q, x)
        q = torch.addcmul(q, self.gamma1, attn_out)  # q + γ1·CA(LN1(u))
        q = torch.addcmul(q, self.gamma2, self.mlp(q))  # q + γ2·MLP(LN2(q))
        return q, attn
