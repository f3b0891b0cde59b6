"""CSWin Transformer backbone (Dong et al., CVPR 2022); timm has no CSWin.

A CSWin block splits its channels (and heads) into two halves: one half attends within
vertical stripes of width ``sw`` (full height), the other within horizontal stripes (full
width); together a token sees a cross-shaped window. The last stage attends globally.
Locally-enhanced positional encoding (LePE): a 3x3 depthwise conv of V inside each window,
added to the attention output. Stages are joined by a 3x3 stride-2 conv + LayerNorm.

Feature maps travel channels-last (B, H, W, C) inside the stages; ``forward_pyramid``
returns channels-first maps for the multi-scale GA models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp
from timm.models import register_notrace_function, register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn

from .cct import init_transformer_weights


def check_cswin_dims(dim: int, num_heads: int, global_attn: bool) -> int:
    """Number of attention directions (1 global, 2 cross-shaped); raises if dim/heads do not split."""
    n_dirs = 1 if global_attn else 2
    if num_heads % n_dirs or dim % num_heads:
        raise ValueError(f"CSWin block: {num_heads} heads over {dim} channels must split evenly into "
                         f"{n_dirs} direction(s)")
    return n_dirs


def depthwise_conv3x3(channels: int) -> nn.Conv2d:
    """LePE's 3x3 depthwise conv (bias)."""
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels)


class LePEParams:
    """For blocks with ``self.lepe``, their LePE convs (one per attention direction): ``lepe_params()``
    gives their weights and biases, which the attention functions take in place of the modules
    (TorchScript passes no modules to free functions)."""

    def lepe_params(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor | None] = []
        for conv in self.lepe:
            weights.append(conv.weight)
            biases.append(conv.bias)
        return weights, biases


def _windows(t: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, K, H, W, C) -> (B*nWin, K, wh*ww, C): the tokens of each (wh, ww) window."""
    b, nb, h, w, c = t.shape
    return t.reshape(b, nb, h // wh, wh, w // ww, ww, c).permute(0, 2, 4, 1, 3, 5, 6).reshape(-1, nb, wh * ww, c)


def _split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B', K, n, C) -> (B'*K, heads, n, C/heads)."""
    n, c = t.shape[-2], t.shape[-1]
    return t.reshape(-1, n, num_heads, c // num_heads).transpose(1, 2)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int], num_heads: int,
                     lepe_weight: torch.Tensor, lepe_bias: torch.Tensor | None) -> torch.Tensor:
    """Self-attention inside non-overlapping (wh, ww) windows, plus LePE.

    q, k, v: (B, K, H, W, C) for K independent branches (K = 1 for a plain block); the
    branches share the window layout and are folded into the batch of one attention call.
    ``lepe_weight`` (K*C, 1, 3, 3) and ``lepe_bias`` (K*C or None) are a depthwise conv over K*C channels
    (branch-major), applied as ``nn.Conv2d`` would (zero padding 1). Returns (B, K, H, W, C).
    """
    b, nb, h, w, c = q.shape
    wh, ww = window
    nh, nw, n = h // wh, w // ww, wh * ww
    qw, kw, vw = _windows(q, wh, ww), _windows(k, wh, ww), _windows(v, wh, ww)
    # LePE sees V of each window as an image, zero-padded at the window's border
    pad = lepe_weight.shape[-1] // 2  # stride, padding, dilation as pairs: TorchScript of torch 2.6 needs lists
    pos = F.conv2d(vw.transpose(2, 3).reshape(-1, nb * c, wh, ww), lepe_weight, lepe_bias, [1, 1], [pad, pad],
                   [1, 1], lepe_weight.shape[0]).reshape(-1, nb, c, n).transpose(2, 3)
    out = F.scaled_dot_product_attention(_split_heads(qw, num_heads), _split_heads(kw, num_heads),
                                         _split_heads(vw, num_heads))
    out = out.transpose(1, 2).reshape(-1, nb, n, c) + pos
    return out.reshape(b, nh, nw, nb, wh, ww, c).permute(0, 3, 1, 4, 2, 5, 6).reshape(b, nb, h, w, c)


def _stripe(size: int, stripe: int, axis: str) -> int:
    sw = min(stripe, size)
    if size % sw:
        raise ValueError(f"CSWin: feature map {axis} {size} is not divisible by stripe width {stripe}; "
                         "choose an input size whose stage maps are")
    return sw


@register_notrace_function  # stripe checks on the map size: an FX leaf wherever it is called from
def cross_shaped_attention(qkv: torch.Tensor, num_heads: int, stripe: int, lepe_weights: list[torch.Tensor],
                           lepe_biases: list[torch.Tensor | None], global_attn: bool) -> torch.Tensor:
    """CSWin attention of (B, K, H, W, 3C) projected q|k|v -> (B, K, H, W, C).

    Cross-shaped: channels [:C/2] with heads/2 in vertical stripes (H, sw), channels [C/2:]
    in horizontal stripes (sw, W); ``lepe_weights`` / ``lepe_biases`` hold one depthwise conv
    per direction (:meth:`LePEParams.lepe_params`). Global: one window covering the map, all heads, one
    LePE conv. A stripe wider than the map is clamped to it.
    """
    h, w = qkv.shape[2], qkv.shape[3]
    q, k, v = qkv.chunk(3, dim=-1)
    if global_attn:
        return window_attention(q, k, v, (h, w), num_heads, lepe_weights[0], lepe_biases[0])
    half, heads = q.shape[-1] // 2, num_heads // 2
    vertical = window_attention(q[..., :half], k[..., :half], v[..., :half], (h, _stripe(w, stripe, "width")),
                                heads, lepe_weights[0], lepe_biases[0])
    horizontal = window_attention(q[..., half:], k[..., half:], v[..., half:], (_stripe(h, stripe, "height"), w),
                                  heads, lepe_weights[1], lepe_biases[1])
    return torch.cat([vertical, horizontal], dim=-1)


@register_notrace_module  # stripe checks on the map size: an FX leaf
class CSWinBlock(LePEParams, nn.Module):
    """Pre-norm CSWin block on (B, H, W, C): x + proj(CSWinAttn(LN(x))), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, stripe: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 global_attn: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.stripe, self.global_attn = num_heads, stripe, global_attn
        n_dirs = check_cswin_dims(dim, num_heads, global_attn)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = nn.ModuleList(depthwise_conv3x3(dim // n_dirs) for _ in range(n_dirs))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm1(x)).unsqueeze(1)  # one branch: (B, 1, H, W, 3C)
        weights, biases = self.lepe_params()
        att = cross_shaped_attention(qkv, self.num_heads, self.stripe, weights, biases, self.global_attn).squeeze(1)
        x = x + self.drop_path(self.proj(att))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvLayerNorm(nn.Module):
    """Conv on a channels-last map, then LayerNorm: CSWin's patch embedding and stage merging.

    (B, H, W, C_in) or, with ``channels_first_in``, the image (B, C_in, H, W) -> (B, H', W', C_out).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int,
                 channels_first_in: bool = False) -> None:
        super().__init__()
        self.channels_first_in = channels_first_in
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_first_in:
            x = x.permute(0, 3, 1, 2)
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class DeepStem(nn.Module):
    """Deep 3-conv stem, stride 4: 3x3/2 conv -> BN -> GELU -> 3x3/2 conv -> BN -> GELU -> 3x3 conv -> LN.

    (B, 3, H, W) -> (B, H/4, W/4, C). The GA release replaces CSWin's 7x7 patch conv with it.
    """

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        mid = dim // 2
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans, mid, 3, 2, 1, bias=False), nn.BatchNorm2d(mid), nn.GELU(),
            nn.Conv2d(mid, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.convs(x).permute(0, 2, 3, 1))


class CSWin(nn.Module):
    """CSWin backbone: stem (stride 4), four stages of CSWin blocks joined by 3x3/2 conv + LN merges.

    Args:
        embed_dim: stage-0 width; stage i has ``embed_dim * 2**i`` channels.
        depths, num_heads, stripes: per stage; the last stage attends globally.
        stem: ``"patch"`` (CSWin's 7x7 stride-4 conv + LN) or ``"deep"`` (:class:`DeepStem`).
        num_intermediates: ``a``; stage 2 also emits its output after blocks n, 2n, …, a·n
            (n = depth₂ // (a+1)) in ``forward_pyramid``.
        drop_path_rate: stochastic depth, linear over ``sum(depths) + extra_drop_path_blocks``
            blocks (the GA models continue the schedule into their fifth stage).
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, depths: Sequence[int] = (1, 2, 21, 1),
                 num_heads: Sequence[int] = (2, 4, 8, 16), stripes: Sequence[int] = (1, 2, 7, 7),
                 mlp_ratio: float = 4.0, stem: str = "patch", num_intermediates: int = 0,
                 drop_path_rate: float = 0.0, extra_drop_path_blocks: int = 0) -> None:
        super().__init__()
        if stem == "patch":
            self.stem = ConvLayerNorm(in_chans, embed_dim, 7, 4, 2, channels_first_in=True)
        elif stem == "deep":
            self.stem = DeepStem(in_chans, embed_dim)
        else:
            raise ValueError(f"CSWin stem must be 'patch' or 'deep', got {stem!r}")
        self.dims = [embed_dim * 2**i for i in range(len(depths))]
        self.depths = list(depths)
        dpr = torch.linspace(0, drop_path_rate, sum(depths) + extra_drop_path_blocks, device="cpu").tolist()
        self.merges = nn.ModuleList(ConvLayerNorm(self.dims[i - 1], self.dims[i], 3, 2, 1)
                                    for i in range(1, len(depths)))
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            last = i == len(depths) - 1
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                CSWinBlock(self.dims[i], num_heads[i], stripes[i], mlp_ratio, global_attn=last,
                           drop_path=dpr[start + j]) for j in range(depth)]))
        every = self.depths[2] // (num_intermediates + 1)
        # blocks n, 2n, …, a·n; a non-empty list of ints for TorchScript: with none, block -1 (never reached)
        self.intermediates = [every * i for i in range(1, num_intermediates + 1)] or [-1]
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=d, reduction=4 * 2**i, module=f"stages.{i}") for i, d in enumerate(self.dims)]
        self.pyramid_dims = self.dims[:2] + [self.dims[2]] * (num_intermediates + 1) + self.dims[3:]
        self.num_features = self.dims[-1]
        self.apply(init_transformer_weights)

    levels_channels_last = True

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages (and their merges) after the last level in ``indices``; there is no norm or head here."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.merges = self.merges[:max_index]
        self.num_features = self.dims[max_index]
        return take

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        if coarse:
            return dict(stem=r"^stem", blocks=[(r"^(?:merges|stages)\.(\d+)", None)])
        return dict(stem=r"^stem", blocks=[(r"^merges\.(\d+)", None), (r"^stages\.(\d+)\.(\d+)", None)])

    def _merge(self, x: torch.Tensor, stage_index: int) -> torch.Tensor:
        """The merge into stage ``stage_index`` (none before stage 0)."""
        for k, merge in enumerate(self.merges):  # TorchScript indexes a ModuleList by literals only
            if k + 1 == stage_index:
                x = merge(x)
        return x

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Image -> (last-stage map, the four stage outputs, stage 2's intermediates), all channels-last."""
        x = self.stem(x)
        levels: list[torch.Tensor] = []
        inter: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = self._merge(x, i)
            for j, block in enumerate(stage, start=1):
                if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
                if i == 2 and j in self.intermediates:
                    inter.append(x)
            levels.append(x)
        return x, levels, inter

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image (B, 3, H, W) -> channels-first maps [stage0, stage1, stage2 intermediates…, stage2, stage3]."""
        _, levels, inter = self._run(x)
        return [t.permute(0, 3, 1, 2) for t in levels[:2] + inter + levels[2:]]

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image -> (last-stage map, the four stage outputs), all channels-last (B, h, w, C)."""
        final, levels, _ = self._run(x)
        return final, levels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> last-stage map, channels-last (B, H/32, W/32, C)."""
        return self.forward_levels(x)[0]
