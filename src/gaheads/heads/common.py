"""Pieces shared by the heads: input layout, K-branch linear layers, the gram vector.

Every head runs its K branches together: each per-branch layer below stores its K weight
sets stacked along a leading branch axis and applies them in one batched matmul, so a
forward pass has no Python loop over branches. The parameter count is exactly that of K
separate layers.

On CPU the large per-token products run as 1x1 convolutions over a channels-last view of the
token matrix instead of as matmuls: torch sends float32 matmuls to MKL's sgemm and 1x1
convolutions to oneDNN, and on the 2-core AMD EPYC we benchmark on oneDNN does these shapes in
half the time (docs/benchmarks.md). Both compute the same sums; only the summation order
differs. On other devices they stay matmuls. Each module that has a fast path carries a
``cpu_convolutions`` flag (default True); :func:`set_cpu_convolutions` switches a whole model
to the matmul path that other devices take.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_notrace_function, register_notrace_module
from torch import nn


@register_notrace_function  # branches on the input's rank: an FX leaf
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
        side = int(math.sqrt(n) + 0.5)  # exact for any token count a model has (math.isqrt does not script)
        if side * side == n:
            return x, (side, side)
        return x, (1, n)
    raise ValueError("heads take a (B, C, H, W) feature map or (B, N, C) tokens")


def use_conv(x: torch.Tensor, enabled: bool = True) -> bool:
    """Whether the per-token products of ``x`` run as 1x1 convolutions: ``enabled`` (a module's
    ``cpu_convolutions`` flag) and ``x`` on CPU (see the module doc)."""
    return enabled and x.is_cpu


def set_cpu_convolutions(model: nn.Module, enabled: bool) -> nn.Module:
    """Set ``cpu_convolutions`` on every module of ``model`` that has the flag; False makes CPU run
    the matmul formulation that other devices take. Returns ``model``."""
    for m in model.modules():
        if hasattr(m, "cpu_convolutions"):
            m.cpu_convolutions = enabled
    return model


def rows_as_image(x: torch.Tensor) -> torch.Tensor:
    """View a row-major (M, C) matrix as a channels-last (s, C, M/s, 1) image, without a copy.

    s = gcd(M, 16): torch hands a single-threaded 1x1 convolution with batch < 16 to its own
    GEMM rather than oneDNN.
    """
    m, c = x.shape
    s = math.gcd(m, 16)
    return x.view(s, m // s, 1, c).permute(0, 3, 1, 2)


def image_as_rows(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rows_as_image`: (s, C, M/s, 1) -> (M, C) (a view when y is channels-last)."""
    s, c, m, _ = y.shape
    return y.permute(0, 2, 3, 1).reshape(s * m, c)


def token_linear(x: torch.Tensor, weight: torch.Tensor, cpu_convolutions: bool = True) -> torch.Tensor:
    """x Wᵀ for tokens x (B, N, I) and weight (O, I) -> (B, N, O), no bias.

    On CPU (with ``cpu_convolutions``) a 1x1 convolution over the (B, I, N, 1) view of x
    (channels-last for contiguous tokens, channels-first for the tokens of a channels-first map;
    no copy either way).
    """
    if not use_conv(x, cpu_convolutions):
        return torch.matmul(x, weight.t())
    b, n, i = x.shape
    y = F.conv2d(x.reshape(b, n, 1, i).permute(0, 3, 1, 2), weight[:, :, None, None])
    return y.permute(0, 2, 3, 1).reshape(b, n, -1)


@register_notrace_module  # device-dependent fast path: an FX leaf
class BranchLinear(nn.Module):
    """K independent Linear(in_features -> out_features) layers, optionally grouped.

    Input (B, K, in_features) -> (B, K, out_features). With ``groups`` g each branch is a
    grouped 1x1 conv: input group j feeds only output group j (in/g -> out/g weights).
    Weight shape (K, g, out/g, in/g); bias (K, out).
    """

    # from this many rows on, CPU runs the K products as one grouped convolution (faster there
    # for token-sized inputs; for a batch of query tokens the batched matmul is faster)
    conv_min_rows = 1024

    def __init__(self, in_features: int, out_features: int, num_branches: int, groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"features {in_features}->{out_features} not divisible by groups={groups}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(
            torch.empty(num_branches, groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(num_branches, out_features)) if bias else None
        self.cpu_convolutions = True
        self.conv_min_rows = type(self).conv_min_rows  # an instance attribute: TorchScript reads those
        trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, _ = x.shape
        bias = self.bias
        if use_conv(x, self.cpu_convolutions) and self.groups == 1 and b >= self.conv_min_rows:
            # many rows (the B·H·W tokens of a gram layer): one conv with K groups, see the module doc
            w = self.weight.reshape(k * self.out_features, self.in_features, 1, 1)
            y = F.conv2d(rows_as_image(x.reshape(b, -1)), w, None if bias is None else bias.reshape(-1), groups=k)
            return image_as_rows(y).view(b, k, self.out_features)
        # one batched matmul over the K·g (branch, group) pairs, on views: (K·g, B, in/g) x (K·g, in/g, out/g)
        kg = k * self.groups
        xs = x.reshape(b, kg, -1).transpose(0, 1)
        w = self.weight.reshape(kg, -1, self.weight.shape[-1]).transpose(1, 2)
        y = torch.bmm(xs, w) if bias is None else torch.baddbmm(bias.view(kg, 1, -1), xs, w)
        return y.transpose(0, 1).reshape(b, k, self.out_features)

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
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), self.weight)


@register_notrace_module
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
        self.cpu_convolutions = True
        trunc_normal_(self.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        k, g, o, i = self.weight.shape
        if use_conv(tokens, self.cpu_convolutions) and (g == 1 or tokens.stride(-1) != 1):
            # one convolution with g groups over the (B, C, N, 1) view of the tokens, output channels
            # running (group, branch, out/g); for the tokens of a channels-first map that view is
            # channels-first and so is the output: with g = 1 it already is (B, K, d, N)
            w = self.weight.transpose(0, 1).reshape(g * k * o, i, 1, 1)
            bias = self.bias.view(k, g, o).transpose(0, 1).reshape(-1)
            y = F.conv2d(tokens.reshape(b, n, 1, g * i).permute(0, 3, 1, 2), w, bias, groups=g)
            return y.reshape(b, g, k, o, n).transpose(1, 2).reshape(b, k, g * o, n)
        # group j of every branch reads the same input slice: (g, K·out/g, C/g) x (g, C/g, B·N); the
        # output's rows run (group, branch, out/g) and its columns (b, n), so reaching (B, K, d, N)
        # moves whole rows of N values (for grouped contractions of contiguous tokens this beats the
        # convolution on CPU, whose channels-last output would be reordered in out/g-sized pieces)
        w = self.weight.transpose(0, 1).reshape(g, k * o, i)
        bias = self.bias.view(k, g, o).transpose(0, 1).reshape(g, k * o, 1)
        y = torch.baddbmm(bias, w, tokens.reshape(b * n, g, i).permute(1, 2, 0))
        return y.view(g, k, o, b, n).permute(3, 1, 0, 2, 4).reshape(b, k, g * o, n)


def gram_triangle_index(dim: int) -> torch.Tensor:
    """Flat indices of the upper triangle incl. the diagonal of a (dim, dim) matrix, row-major."""
    rows, cols = torch.triu_indices(dim, dim)
    return rows * dim + cols


class _SymmetricGram(torch.autograd.Function):
    """G = Z Zᵀ for a batch of (d, N) matrices; backward dZ = (dG + dGᵀ) Z in one matmul.

    Autograd's matmul backward would compute dG Z and dGᵀ Z separately (two d·d·N products)
    because it does not know both operands are the same tensor.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return torch.matmul(z, z.transpose(-1, -2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return torch.matmul(grad + grad.transpose(-1, -2), z)


@torch.jit.unused
def _symmetric_gram(z: torch.Tensor) -> torch.Tensor:
    """Z Zᵀ with the one-matmul backward (eager autograd only; TorchScript compiles a stub)."""
    return _SymmetricGram.apply(z)


def _gram_triangle(xc: torch.Tensor, height: int, tri_index: torch.Tensor) -> torch.Tensor:
    n = xc.shape[-1]
    z = xc.to(torch.promote_types(xc.dtype, torch.float32))
    # the custom backward only matters with grad; the plain matmul (same values) keeps tracing,
    # scripting and torch.export to ordinary graph ops
    if torch.jit.is_scripting() or torch.jit.is_tracing() or not z.requires_grad:
        gram = torch.matmul(z, z.transpose(-1, -2))  # (B, K, d, d)
    else:
        gram = _symmetric_gram(z)
    vec = gram.flatten(-2).index_select(-1, tri_index)  # gather the triangle; no second d*d copy
    return F.normalize(vec * (1.0 / (height * height * n)), dim=-1, eps=1e-12)


@torch.jit.unused
def _gram_triangle_fp32(xc: torch.Tensor, height: int, tri_index: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=xc.device.type, enabled=False):
        return _gram_triangle(xc, height, tri_index)


@register_notrace_function
def gram_vector(xc: torch.Tensor, height: int, tri_index: torch.Tensor) -> torch.Tensor:
    """Normalised gram vector of contracted features (step 3 of a GA branch).

    xc: (B, K, d, N) contracted features of each branch; returns (B, K, d(d+1)/2) in float32
    (float64 for float64 input). Z = X'/H, G = Z Zᵀ / N; the upper triangle (i <= j, row-major)
    L2-normalised per sample. Computed in at least float32, also under autocast: bf16/fp16
    squares overflow or lose the small entries, while float32 holds |X'| up to ~1e17. The scale
    1/(H²N) is applied to the d(d+1)/2 triangle rather than to the d×N map (fewer elements;
    same values up to rounding). (TorchScript has no autocast: a scripted model computes it
    in float32 directly.)
    """
    if torch.jit.is_scripting() or xc.is_meta:  # no autocast on meta tensors (shape-only runs)
        return _gram_triangle(xc, height, tri_index)
    return _gram_triangle_fp32(xc, height, tri_index)


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

    def pool_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x -> branch embeddings (B, K, C) and class-attention weights (B, K, heads, 1+N) or None."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x -> branch embeddings (B, K, C)."""
        return self.pool_with_attention(x)[0]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier on the device and dtype of the head's parameters, in the head's train/eval mode."""
        ref = next(iter(self.parameters()), None)
        self.num_classes = num_classes
        self.classifier = branch_classifier(self.dim, num_classes, self.num_branches)
        if ref is not None:
            self.classifier.to(device=ref.device, dtype=ref.dtype)
        self.classifier.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) or (B, N, C) -> (B, K, num_classes) per-branch logits."""
        z = self.pool(x)
        return z if pre_logits else self.classifier(z)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-branch logits and class-attention weights (B, K, heads, 1+N), or None for heads without."""
        z, attn = self.pool_with_attention(x)
        return self.classifier(z), attn
