"""CSWin classifiers (``cswin_tiny_224``, ``cswin_small_224``) and GA-CSWin T/S.

GA-CSWin follows the GA-ConvNeXt pattern: a deep 3-conv stem, the four CSWin stages,
multi-scale aggregation at stage 2's resolution (14x14 at 224) into a fifth CSWin stage of
width D, then five GA branches, each with its own one-block CSWin gram layer at width d.
The configuration (chosen to land within 3% of the paper's 42.0M / 6.1 and 54.3M / 8.7;
see the README's model zoo) is in ``GA_CSWIN_ARCHS``.
"""

# no `from __future__ import annotations`: torch.fx copies the forward annotations of the traced root
# into its generated code, and TorchScript cannot resolve them there as strings

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn

from ..backbones.cct import init_transformer_weights
from ..backbones.cswin import CSWin, CSWinBlock
from ..heads import GramAttentionHead
from .base import MultiBranchModel, prefix_matcher, to_output_fmt
from .gram_layers import BranchCSWinBlock
from .multiscale import aggregate
from .registry import make_cfg, register

CSWIN_ARCHS = {
    "cswin_tiny_224": dict(depths=(1, 2, 21, 1)),
    "cswin_small_224": dict(depths=(2, 4, 32, 2)),
}
# GA-CSWin: CSWin depths, a (stage-2 intermediates), fifth-stage width D and blocks, GA d / e / m
GA_CSWIN_ARCHS = {
    "ga_cswin_tiny_224": dict(depths=(1, 2, 21, 1), num_intermediates=2, fifth_dim=512, fifth_depth=1,
                              gram_dim=192, attn_dim=192, mlp_groups=4),
    "ga_cswin_small_224": dict(depths=(2, 4, 32, 2), num_intermediates=4, fifth_dim=512, fifth_depth=1,
                               gram_dim=192, attn_dim=192, mlp_groups=4),
}
SEED_ALIASES = {"ga_CSWin_64_12211_tiny_224": "ga_cswin_tiny_224", "ga_CSWin_64_24322_small_224": "ga_cswin_small_224"}


class CSWinTransformer(nn.Module):
    """Plain CSWin classifier: :class:`CSWin` (7x7 patch stem) -> LayerNorm -> token mean -> Linear.

    ``forward_features``: (B, H/32, W/32, C) channels-last (timm's ``NHWC``), normed.
    """

    output_fmt = "NHWC"

    def __init__(self, depths: Sequence[int] = (1, 2, 21, 1), num_classes: int = 1000, in_chans: int = 3,
                 embed_dim: int = 64, num_heads: Sequence[int] = (2, 4, 8, 16), stripes: Sequence[int] = (1, 2, 7, 7),
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 img_size: int | None = None, global_pool: str = "avg") -> None:
        super().__init__()
        self.backbone = CSWin(in_chans, embed_dim, depths, num_heads, stripes, mlp_ratio, stem="patch",
                              drop_path_rate=drop_path_rate)
        self.num_classes, self.num_features = num_classes, self.backbone.num_features
        self.head_hidden_size, self.in_chans = self.num_features, in_chans
        self.global_pool = global_pool
        self.feature_info = [dict(f, module=f"backbone.{f['module']}") for f in self.backbone.feature_info]
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self._init_head()

    def _init_head(self) -> None:
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh Linear (Identity for 0) on the model's device and dtype; ``global_pool``: "avg" or ""."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        ref = self.norm.weight
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes else nn.Identity()
        self._init_head()
        self.head.train(self.training)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        matcher = prefix_matcher(self.backbone.group_matcher(coarse), "backbone.")
        return dict(matcher, blocks=matcher["blocks"] + [(r"^norm", (99999,))])

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's intermediate-features API over the four stages (see ``MultiBranchModel.forward_intermediates``)."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        final, levels = self.backbone.forward_levels(x)
        picked = [to_output_fmt(levels[i], True, output_fmt) for i in take]
        return picked if intermediates_only else (self.norm(final), picked)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's pruning API: drop the stages after the last level in ``indices``.

        The final norm (sized for the last stage) goes with ``prune_norm`` or with any stage; the
        classifier with ``prune_head`` or with any stage (``forward`` then gives the unpooled
        features). Returns the kept level indices.
        """
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        prune_end = max_index < len(self.feature_info) - 1
        self.backbone.prune_intermediate_layers(take)
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.num_features = self.head_hidden_size = self.backbone.num_features
            self.num_classes = 0
            self.head = nn.Identity()
            self.global_pool = ""
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.backbone.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = self.head_drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MultiScaleCSWin(nn.Module):
    """CSWin (deep stem) + multi-scale aggregation + fifth CSWin stage: image -> X (B, D, H/16, W/16).

    Fifth stage: 1x1 conv (bias) from the concatenation to D + LayerNorm, ``fifth_depth``
    CSWin blocks (D/32 heads, stripe 7), final LayerNorm. Drop path continues linearly
    from the four stages into the fifth.
    """

    def __init__(self, depths: Sequence[int], num_intermediates: int, fifth_dim: int, fifth_depth: int = 1,
                 in_chans: int = 3, embed_dim: int = 64, num_heads: Sequence[int] = (2, 4, 8, 16),
                 stripes: Sequence[int] = (1, 2, 7, 7), mlp_ratio: float = 4.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.trunk = CSWin(in_chans, embed_dim, depths, num_heads, stripes, mlp_ratio, stem="deep",
                           num_intermediates=num_intermediates, drop_path_rate=drop_path_rate,
                           extra_drop_path_blocks=fifth_depth)
        dpr = torch.linspace(0, drop_path_rate, sum(depths) + fifth_depth, device="cpu").tolist()[sum(depths):]
        self.proj = nn.Conv2d(sum(self.trunk.pyramid_dims), fifth_dim, 1)
        self.proj_norm = nn.LayerNorm(fifth_dim)
        self.blocks = nn.Sequential(*[CSWinBlock(fifth_dim, fifth_dim // 32, stripes[2], mlp_ratio, drop_path=p)
                                      for p in dpr])
        self.norm = nn.LayerNorm(fifth_dim)
        self.num_features = fifth_dim
        self.has_neck = True  # False once prune_intermediate_layers removed the fifth stage
        self.feature_info = [dict(f, module=f"trunk.{f['module']}") for f in self.trunk.feature_info]
        trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        for m in self.blocks.modules():
            init_transformer_weights(m)

    levels_channels_last = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        matcher = prefix_matcher(self.trunk.group_matcher(coarse), "trunk.")
        return dict(matcher, blocks=matcher["blocks"] + [(r"^(?:proj|blocks|norm)", (99999,))])

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image -> (X, the trunk's stage outputs (B, C, h, w): four, fewer once pruned)."""
        pyramid = self.trunk.forward_pyramid(x)
        extra = len(pyramid) - len(self.trunk.stages)  # stage 2's intermediates, in the pyramid after stage 1
        stage_maps = pyramid[:2] + pyramid[2 + extra:]
        if not self.has_neck:
            return pyramid[-1], stage_maps
        return self._neck(pyramid), stage_maps

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the trunk stages after the last level in ``indices``; with ``prune_head`` (forced when a
        stage goes: the neck reads all four) also the fifth stage, its norms included."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.trunk.prune_intermediate_layers(take)
        if prune_head or max_index < len(self.feature_info) - 1:
            self.proj, self.proj_norm, self.blocks, self.norm = nn.Identity(), nn.Identity(), nn.Sequential(), \
                nn.Identity()
            self.has_neck = False
            self.num_features = self.trunk.num_features
        return take

    def _neck(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        x = self.proj(aggregate(pyramid, pyramid[-2].shape[-2:])).permute(0, 2, 3, 1)
        return self.norm(self.blocks(self.proj_norm(x))).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> X (B, D, H/16, W/16); once pruned, the last kept stage's map."""
        pyramid = self.trunk.forward_pyramid(x)
        if not self.has_neck:
            return pyramid[-1]
        return self._neck(pyramid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class GACSWin(MultiBranchModel):
    """GA-CSWin: :class:`MultiScaleCSWin` + K GA branches, each with a CSWin gram layer.

    Args:
        depths: CSWin stage depths. num_intermediates: a.
        fifth_dim, fifth_depth: D and the fifth stage's block count.
        gram_dim, attn_dim, mlp_groups, contraction_groups, embed_groups: d, e, m, g, embedding groups.
        gram_heads: heads of the CSWin gram layer (stripe 7, cross-shaped), default d/32.
        img_size: unused (the input size is free up to stripe divisibility); accepted so
            ``create_model(name, img_size=...)`` works for every model.
    """

    def __init__(self, depths: Sequence[int] = (1, 2, 21, 1), num_intermediates: int = 2, fifth_dim: int = 512,
                 fifth_depth: int = 1, gram_dim: int = 192, attn_dim: int = 128, mlp_groups: int = 4,
                 num_classes: int = 1000, num_branches: int = 5, contraction_groups: int = 1, embed_groups: int = 8,
                 gram_heads: int | None = None, in_chans: int = 3, drop_path_rate: float = 0.0,
                 img_size: int | None = None) -> None:
        backbone = MultiScaleCSWin(depths, num_intermediates, fifth_dim, fifth_depth, in_chans,
                                   drop_path_rate=drop_path_rate)
        gram_layer = BranchCSWinBlock(gram_dim, num_branches, gram_heads or gram_dim // 32, stripe=7,
                                      drop_path=drop_path_rate)  # the full rate, as released
        head = GramAttentionHead(fifth_dim, num_classes, num_branches, gram_dim=gram_dim,
                                 contraction_groups=contraction_groups, embed_groups=embed_groups, attn_dim=attn_dim,
                                 mlp_groups=mlp_groups, gram_layer=gram_layer)
        super().__init__(backbone, head, in_chans)


def _register_all() -> None:
    # at 112 (the smallest size whose stage-2 map is a multiple of the stripe width 7) every stage works
    cfg = make_cfg((3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=0.875, num_classes=1000,
                   first_conv="backbone.trunk.stem.convs.0", pool_size=(14, 14), min_input_size=(3, 112, 112))
    plain_cfg = {**cfg, "classifier": "head", "first_conv": "backbone.stem.conv", "pool_size": (7, 7)}
    for name, kw in CSWIN_ARCHS.items():
        register(__name__, name, CSWinTransformer, plain_cfg, **kw)
    archs = {**GA_CSWIN_ARCHS, **{alias: GA_CSWIN_ARCHS[target] for alias, target in SEED_ALIASES.items()}}
    for name, kw in archs.items():
        register(__name__, name, GACSWin, cfg, **kw)


_register_all()
