"""GA-ConvNeXt, the improved GA release: six widths and the seed's aliases.

ConvNeXt stem and four stages (timm's ``ConvNeXtStage``), multi-scale aggregation at
stage 2's resolution (14x14 at 224) into an SE-bottleneck fifth stage of width D, then five
GA branches (d = 192, contraction groups 1, embedding groups 8, e = the table's column,
m = 4), each with its own one-block ConvNeXt gram layer at width 192.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm, LayerNorm2d
from timm.models._features import feature_take_indices
from timm.models.convnext import ConvNeXtStage
from torch import nn

from ..heads import GramAttentionHead
from .base import MultiBranchModel
from .gram_layers import BranchConvNeXtBlock, layer_scale_names
from .multiscale import SEBottleneck, aggregate, drop_neck_after_pruning, init_conv_linear, intermediate_blocks
from .registry import make_cfg, register

# name: (depths of stages 0-3, dims of stages 0-3 (= D for stage 3), a, e)
GA_CONVNEXT_ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, int]] = {
    "ga_convnext_tiny_688": ((3, 3, 9, 3), (96, 192, 384, 688), 2, 168),
    "ga_convnext_tiny_768": ((3, 3, 9, 3), (96, 192, 384, 768), 2, 192),
    "ga_convnext_small_688": ((3, 3, 27, 3), (96, 192, 384, 688), 4, 168),
    "ga_convnext_small_768": ((3, 3, 27, 3), (96, 192, 384, 768), 4, 192),
    "ga_convnext_base_976": ((3, 3, 27, 3), (128, 256, 512, 976), 4, 240),
    "ga_convnext_base_1024": ((3, 3, 27, 3), (128, 256, 512, 1024), 4, 256),
}
ALIASES = {"ga_convnext_tiny": "ga_convnext_tiny_688", "ga_convnext_small": "ga_convnext_small_688",
           "ga_convnext_base": "ga_convnext_base_976"}


class MultiScaleConvNeXt(nn.Module):
    """ConvNeXt trunk + multi-scale aggregation + SE-bottleneck fifth stage: image -> X (B, D, H/16, W/16).

    Drop path rises linearly over all ``sum(depths) + 1`` blocks; the fifth stage gets the full rate.
    """

    def __init__(self, depths: Sequence[int], dims: Sequence[int], num_intermediates: int, in_chans: int = 3,
                 drop_path_rate: float = 0.0, ls_init_value: float = 1e-6) -> None:
        super().__init__()
        dpr = torch.linspace(0, drop_path_rate, sum(depths) + 1, device="cpu").tolist()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.stages = nn.ModuleList()
        in_chs = dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            start = sum(depths[:i])
            self.stages.append(ConvNeXtStage(in_chs, dim, stride=2 if i else 1, depth=depth,
                                             drop_path_rates=dpr[start:start + depth], ls_init_value=ls_init_value,
                                             norm_layer=LayerNorm2d, norm_layer_cl=LayerNorm))
            in_chs = dim
        # a non-empty list of ints for TorchScript: with no intermediates, block -1 (never reached)
        self.intermediates = sorted(intermediate_blocks(depths[2], num_intermediates)) or [-1]
        cat_dim = dims[0] + dims[1] + dims[2] * (num_intermediates + 1) + dims[3]
        self.fifth = SEBottleneck(cat_dim, dims[3], drop_path=dpr[-1])
        self.num_features = dims[3]
        self.has_neck = True  # False once prune_intermediate_layers removed the fifth stage
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=d, reduction=4 * 2**i, module=f"stages.{i}") for i, d in enumerate(dims)]
        self.apply(init_conv_linear)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        if coarse:
            return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)", None), (r"^fifth", (99999,))])
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)\.downsample", (0,)),
                                            (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^fifth", (99999,))])

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image -> [stage0, stage1, stage2 after blocks n, …, a·n, stage2, stage3], channels-first."""
        x = self.stem(x)
        out: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if i == 2 and self.intermediates[0] > 0:
                x = stage.downsample(x)
                j = 0
                for block in stage.blocks:
                    j += 1
                    if self.grad_checkpointing and not torch.jit.is_scripting():
                        x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                    else:
                        x = block(x)
                    if j in self.intermediates:
                        out.append(x)
            else:
                x = stage(x)
            out.append(x)
        return out

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> (``forward_features(x)``, the stage outputs: four, fewer once pruned)."""
        pyramid = self.forward_pyramid(x)
        extra = len(pyramid) - len(self.stages)  # stage 2's intermediates, in the pyramid after stage 1
        stage_maps = pyramid[:2] + pyramid[2 + extra:]
        if not self.has_neck:
            return pyramid[-1], stage_maps
        return self.fifth(aggregate(pyramid, pyramid[-2].shape[-2:])), stage_maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> X (B, D, H/16, W/16); once pruned, the last kept stage's map."""
        pyramid = self.forward_pyramid(x)
        if not self.has_neck:
            return pyramid[-1]
        return self.fifth(aggregate(pyramid, pyramid[-2].shape[-2:]))

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last level in ``indices``; with ``prune_head`` (forced when a stage
        goes: the neck reads all four) also the aggregation's fifth stage. There is no final norm."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        drop_neck_after_pruning(self, max_index, prune_head)
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class GAConvNeXt(MultiBranchModel):
    """GA-ConvNeXt: :class:`MultiScaleConvNeXt` + K GA branches with ConvNeXt gram layers.

    Args:
        depths, dims: ConvNeXt stages 0-3; D = dims[3].
        num_intermediates: a, stage-2 outputs fed to the aggregation besides its last.
        attn_dim: e, the class attention's q/k/v width.
        gram_dim, contraction_groups, embed_groups, mlp_groups: d, g, embedding groups, m.
        img_size: unused; the model is fully convolutional (any multiple of 32 works), the
            argument exists so ``create_model(name, img_size=...)`` works for every model.
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 688),
                 num_intermediates: int = 2, attn_dim: int = 168, num_classes: int = 1000, num_branches: int = 5,
                 gram_dim: int = 192, contraction_groups: int = 1, embed_groups: int = 8, mlp_groups: int = 4,
                 in_chans: int = 3, drop_path_rate: float = 0.0, img_size: int | None = None) -> None:
        backbone = MultiScaleConvNeXt(depths, dims, num_intermediates, in_chans, drop_path_rate)
        head = GramAttentionHead(dims[3], num_classes, num_branches, gram_dim=gram_dim,
                                 contraction_groups=contraction_groups, embed_groups=embed_groups, attn_dim=attn_dim,
                                 mlp_groups=mlp_groups,  # gram layers: the full drop-path rate, as released
                                 gram_layer=BranchConvNeXtBlock(gram_dim, num_branches, drop_path=drop_path_rate))
        super().__init__(backbone, head, in_chans)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | layer_scale_names(self)


def _register_all() -> None:
    cfg = make_cfg((3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=0.875, num_classes=1000,
                   first_conv="backbone.stem.0", pool_size=(14, 14))
    archs = {**GA_CONVNEXT_ARCHS, **{alias: GA_CONVNEXT_ARCHS[target] for alias, target in ALIASES.items()}}
    for name, (depths, dims, a, e) in archs.items():
        register(__name__, name, GAConvNeXt, cfg, depths=depths, dims=dims, num_intermediates=a, attn_dim=e)


_register_all()
