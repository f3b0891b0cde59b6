"""The improved GA release's neck: multi-scale aggregation into a fifth stage.

The backbone's pyramid [stage0, stage1, stage2 intermediates…, stage2, stage3] is brought to
stage 2's resolution (average pooling down, bilinear up) and concatenated along channels; a
fifth stage turns the concatenation into the D-channel map X that the GA branches read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SEModule, trunc_normal_
from timm.models import register_notrace_function
from torch import nn


def intermediate_blocks(depth: int, count: int) -> set[int]:
    """Stage 2 emits its output after blocks n, 2n, …, a·n (1-based), n = depth // (a+1)."""
    n = depth // (count + 1)
    return {n * i for i in range(1, count + 1)}


def init_conv_linear(m: nn.Module) -> None:
    """Conv and Linear weights trunc-normal std 0.02, zero bias (the GA release's init); use with ``apply``."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def pool_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Average-pool (B, C, H, W) down to ``size``: a box filter when the sizes divide (as at 224;
    faster than adaptive pooling on CPU, same values), adaptive pooling otherwise."""
    h, w, th, tw = x.shape[-2], x.shape[-1], size[0], size[1]
    if h % th == 0 and w % tw == 0:
        return F.avg_pool2d(x, [h // th, w // tw])
    return F.adaptive_avg_pool2d(x, [th, tw])


def resize(x: torch.Tensor, size: list[int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) brought to ``size``: average-pooled when larger, bilinearly upsampled when smaller.

    ``weight``, a (C', C) per-pixel linear map (a 1x1 conv), is applied on the smaller side: after
    pooling, before upsampling. Both resizings are linear per channel, so the result is
    ``weight · resize(x)`` either way, with the projection's MACs at the lower resolution.
    """
    th, tw = size[0], size[1]
    if x.shape[-2] == th and x.shape[-1] == tw:
        return x if weight is None else F.conv2d(x, weight[:, :, None, None])
    if x.shape[-1] > tw:
        x = pool_to(x, [th, tw])
        return x if weight is None else F.conv2d(x, weight[:, :, None, None])
    if weight is not None:
        x = F.conv2d(x, weight[:, :, None, None])
    return F.interpolate(x, size=[th, tw], mode="bilinear", align_corners=False)


@register_notrace_function  # branches on the levels' sizes: an FX leaf
def aggregate(features: list[torch.Tensor], size: list[int]) -> torch.Tensor:
    """Resize channels-first maps to ``size`` (:func:`resize`) and concatenate: (B, ΣC_i, *size)."""
    return torch.cat([resize(f, size) for f in features], dim=1)


@register_notrace_function
def project_levels(features: list[torch.Tensor], weight: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Σ_i weight_i · resize(features_i): a 1x1 conv (weight (O, ΣC_i)) of the concatenation, level by level."""
    out = torch.zeros(0)
    start = 0
    for i, f in enumerate(features):
        c = f.shape[1]
        y = resize(f, size, weight[:, start:start + c])
        out = y if i == 0 else out + y
        start += c
    return out


# torch.fx: leaves wherever they are called from (timm's registry covers calls from traced modules only)
torch.fx.wrap("aggregate")
torch.fx.wrap("project_levels")


def drop_neck_after_pruning(backbone: nn.Module, max_index: int, prune_head: bool) -> None:
    """After ``backbone`` kept only its levels up to ``max_index``: remove its aggregation's fifth stage
    when the head goes too or a level went (the aggregation reads every level); its features are then
    the last kept level's map."""
    if prune_head or max_index < len(backbone.feature_info) - 1:
        backbone.fifth = nn.Identity()
        backbone.has_neck = False
        backbone.num_features = backbone.feature_info[max_index]["num_chs"]


class SEBottleneck(nn.Module):
    """GA-ConvNeXt's fifth stage: one squeeze-excite bottleneck, (B, C_in, H, W) -> (B, D, H, W).

    1x1 conv -> D/4, BN, ReLU; 3x3 conv, BN, ReLU; SE(D/4, rd_ratio 1/4); 1x1 conv -> D, BN;
    plus a projection shortcut (1x1 conv, BN; the conv's bias, which the BN cancels, is there
    only for the GA-ConvNeXt release's parameter counts: ``shortcut_bias``); drop path on the
    residual branch; ReLU. timm's ResNet ``Bottleneck`` puts its SE after the expanding conv
    (width D) and has a bias-free shortcut, so it does not give these counts.
    """

    def __init__(self, in_chs: int, out_chs: int, se_ratio: float = 0.25, drop_path: float = 0.0,
                 shortcut_bias: bool = True) -> None:
        super().__init__()
        mid = out_chs // 4
        self.conv1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.se = SEModule(mid, rd_ratio=se_ratio)  # = timm create_attn('se', mid, rd_ratio=se_ratio)
        self.conv3 = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=shortcut_bias), nn.BatchNorm2d(out_chs))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(self.conv1(x), self.shortcut(x))

    def forward_pyramid(self, features: list[torch.Tensor], size: list[int]) -> torch.Tensor:
        """``forward(aggregate(features, size))`` with the same weights, computed level by level.

        The two 1x1 convs that read the concatenation (``conv1`` and the shortcut's) are linear
        per pixel, so they commute with the resizing, which is linear per channel: each level
        gets its slice of both convs' weights (one GEMM per level) after average pooling (at
        the target size) or before bilinear upsampling (at its own, smaller size), and the
        levels' outputs are summed. The C_in-channel concatenation is never built, and the
        largest level (stage 3, upsampled 2x) costs a quarter of its MACs. Equal to ``forward``
        up to float rounding.
        """
        mid = self.conv1.out_channels
        weight = torch.cat((self.conv1.weight, self.shortcut[0].weight)).flatten(1)  # (mid + D, C_in)
        both = project_levels(features, weight, size)
        y, shortcut = both.split((mid, both.shape[1] - mid), dim=1)
        bias = self.shortcut[0].bias
        if bias is not None:
            shortcut = shortcut + bias[:, None, None]
        shortcut = self.shortcut[1](shortcut)
        return self._residual(y, shortcut)

    def _residual(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """The block after its first conv: ``y`` = conv1(x), ``shortcut`` = the projected x."""
        y = F.relu(self.bn1(y))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.se(y)))
        return F.relu(self.drop_path(y) + shortcut)
