"""Multi-branch heads on timm backbones: GA-ResNet50, GA-ViT-S/M (SPEC 2.3) and ``<head><K>@<timm model>``.

``GAHeadsModel("resnet18", "ga", 5, num_classes=10)`` — or ``gaheads.create_model("ga5@resnet18")``
— puts K branches of any head on a timm model's last feature map or tokens. The features
are timm's pre-logits output with pooling disabled (``global_pool=''``): every backbone
parameter is used (e.g. ConvNeXt's final norm and MobileNetV3's head conv, which timm keeps
outside ``forward_features``). Channels-last maps (Swin) are made channels-first; ViT's
class / distillation / register tokens (``num_prefix_tokens``) are dropped.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..heads import HEADS, GramAttentionHead, create_head
from .base import MultiHeadModel
from .factory import UnknownModelError, suggest
from .gram_layers import BranchBottleneck
from .multiscale import SEBottleneck, init_conv_linear, intermediate_blocks
from .registry import make_cfg, register

_logger = logging.getLogger(__name__)
PATTERN = re.compile(r"^([a-z]+)(\d+)@(.+)$")


def default_head_kwargs(kind: str, dim: int) -> dict[str, Any]:
    """Head settings that fit any width C: the CCT defaults (d = 64, g = 8, e = C/4, m = 2),
    with groups dropped to 1 and e rounded to a multiple of the 8 attention heads where C needs it."""
    attn = dict(attn_dim=max(8, dim // 4 // 8 * 8), mlp_groups=2 if dim % 2 == 0 else 1)
    groups = 8 if dim % 8 == 0 else 1
    gram = dict(gram_dim=64, contraction_groups=groups, embed_groups=groups)
    return {"ga": {**gram, **attn}, "gram": {**gram, **attn}, "sg": gram, "seqattn": attn, "at": attn,
            "seqpool": {}}[kind]


def load_backbone_checkpoint(module: nn.Module, path: str | os.PathLike) -> nn.modules.module._IncompatibleKeys:
    """Load a local timm checkpoint (``.pth``/``.pt``/``.safetensors``, plain or wrapped in
    ``state_dict``/``model``) into ``module`` non-strictly; warn and return the missing / unexpected keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone checkpoint {path!r} does not exist")
    state = timm.models.load_state_dict(path, use_ema=False)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        msg = (f"backbone checkpoint {path}: {len(result.missing_keys)} missing keys {result.missing_keys[:8]}, "
               f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:8]}")
        warnings.warn(msg, stacklevel=2)
    else:
        _logger.info("backbone checkpoint %s: all %d keys loaded", path, len(state))
    return result


class TimmFeatures(nn.Module):
    """A timm model as a feature extractor: image -> (B, C, H, W) map or (B, N, C) patch tokens.

    ``num_features`` is C (timm's ``head_hidden_size``, the width its classifier would read).
    """

    def __init__(self, model_name: str, img_size: int | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            raise UnknownModelError(f"unknown timm model {model_name!r}{suggest(model_name, timm.list_models())}")
        kwargs = dict(pretrained=False, num_classes=0, global_pool="", **timm_kwargs)
        try:
            self.model = timm.create_model(model_name, **kwargs, **({"img_size": img_size} if img_size else {}))
        except TypeError as e:
            if not img_size or "img_size" not in str(e):
                raise
            self.model = timm.create_model(model_name, **kwargs)  # a CNN: any input size works
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 0)
        self.channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        self.num_features = getattr(self.model, "head_hidden_size", None) or self.model.num_features

    def no_weight_decay(self) -> set[str]:
        """The timm model's own exemptions (e.g. ViT's pos_embed, cls_token)."""
        return {f"model.{n}" for n in getattr(self.model, "no_weight_decay", set)()}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if y.ndim == 3:
            return y[:, self.num_prefix_tokens:]
        if y.ndim == 4:
            return y.permute(0, 3, 1, 2) if self.channels_last else y
        raise ValueError(f"backbone features have shape {tuple(y.shape)}; heads need a (B, C, H, W) map "
                         "or (B, N, C) tokens")


class GAHeadsModel(MultiHeadModel):
    """Any timm backbone + K branches of any head (``ga``/``gram``, ``seqattn``, ``seqpool``, ``sg``, ``at``).

    Args:
        backbone_name: a timm model name (built without pretrained weights).
        head, num_branches, num_classes: the head kind, K and the classes.
        head_kwargs: overrides of :func:`default_head_kwargs` (e.g. ``gram_dim``, ``attn_dim``).
        backbone_checkpoint: a local timm checkpoint for the backbone; the missing / unexpected
            keys are warned about and kept in ``backbone_load_result``. ``gaheads_config``
            records the pattern name (``ga5@resnet18``) and the other arguments, not this one.
        img_size: input size for backbones that need one (ViT); others ignore it.
        **backbone_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``depth``).
    """

    def __init__(self, backbone_name: str, head: str = "ga", num_branches: int = 5, num_classes: int = 1000,
                 head_kwargs: dict[str, Any] | None = None, backbone_checkpoint: str | os.PathLike | None = None,
                 img_size: int | None = None, **backbone_kwargs: Any) -> None:
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
        backbone = TimmFeatures(backbone_name, img_size, **backbone_kwargs)
        dim = backbone.num_features
        kwargs = {**default_head_kwargs(head, dim), **(head_kwargs or {})}
        super().__init__(backbone, create_head(head, dim, num_classes, num_branches, **kwargs))
        cfg = dict(backbone.model.pretrained_cfg)
        if img_size:
            cfg["input_size"] = (cfg.get("input_size", (3, 224, 224))[0], img_size, img_size)
        self.pretrained_cfg = self.default_cfg = {**cfg, "num_classes": num_classes, "classifier": "head.classifier"}
        # how to rebuild it (checkpoints): the pattern name; the weights come from the checkpoint itself
        recorded = dict(num_classes=num_classes, head_kwargs=head_kwargs, img_size=img_size, **backbone_kwargs)
        self.gaheads_config = {"name": f"{head}{num_branches}@{backbone_name}",
                               "kwargs": {k: v for k, v in recorded.items() if v is not None}}
        self.backbone_load_result = None
        if backbone_checkpoint is not None:
            self.backbone_load_result = load_backbone_checkpoint(backbone.model, backbone_checkpoint)


TimmBackboneModel = GAHeadsModel


def parse_pattern(name: str) -> tuple[str, int, str]:
    """``"ga5@resnet18"`` -> ("ga", 5, "resnet18"); UnknownModelError for a bad pattern."""
    match = PATTERN.match(name)
    if not match:
        raise UnknownModelError(f"bad model pattern {name!r}; expected <head><branches>@<timm model>, "
                                "e.g. ga5@resnet18")
    kind, k, backbone = match.group(1), int(match.group(2)), match.group(3)
    if kind not in HEADS:
        raise UnknownModelError(f"unknown head {kind!r} in {name!r}; choose one of {', '.join(sorted(HEADS))}")
    if k < 1:
        raise UnknownModelError(f"{name!r}: the branch count must be >= 1")
    if not timm.is_model(backbone):
        raise UnknownModelError(f"unknown timm model {backbone!r} in {name!r}{suggest(backbone, timm.list_models())}")
    return kind, k, backbone


def create_pattern_model(name: str, **kwargs: Any) -> GAHeadsModel:
    """Build ``<head><K>@<timm model>``; ``kwargs`` go to :class:`GAHeadsModel` (None values: defaults)."""
    kind, k, backbone = parse_pattern(name)
    return GAHeadsModel(backbone, kind, k, **{n: v for n, v in kwargs.items() if v is not None})


class MultiScaleResNet(nn.Module):
    """timm ResNet trunk + multi-scale aggregation + SE-bottleneck fifth stage (the GA-ConvNeXt neck).

    Pyramid [layer1, layer2, layer3 after blocks n, …, a·n, layer3, layer4] at layer3's
    resolution (14x14 at 224) -> SEBottleneck -> X (B, D, H/16, W/16). The SE bottleneck reads
    the pyramid level by level (:meth:`SEBottleneck.forward_pyramid`): the same function and
    parameters as on the concatenation, with its first convs on layer4 at 7x7 instead of 14x14.
    """

    def __init__(self, model_name: str = "resnet50", fifth_dim: int = 512, num_intermediates: int = 0,
                 drop_path_rate: float = 0.0, in_chans: int = 3) -> None:
        super().__init__()
        self.trunk = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="",
                                       drop_path_rate=drop_path_rate, in_chans=in_chans)
        t = self.trunk
        widths = [t.feature_info[i]["num_chs"] for i in range(1, 5)]  # layer1..layer4
        self.intermediates = intermediate_blocks(len(t.layer3), num_intermediates)
        cat_dim = widths[0] + widths[1] + widths[2] * (num_intermediates + 1) + widths[3]
        # no shortcut conv bias: the BN after it cancels it (GA-ConvNeXt keeps one for its counts)
        self.fifth = SEBottleneck(cat_dim, fifth_dim, drop_path=drop_path_rate, shortcut_bias=False)
        self.fifth.apply(init_conv_linear)
        self.num_features = fifth_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> X (B, D, H/16, W/16)."""
        t = self.trunk
        x = t.maxpool(t.act1(t.bn1(t.conv1(x))))
        pyramid = []
        for i, stage in enumerate((t.layer1, t.layer2, t.layer3, t.layer4)):
            for j, block in enumerate(stage, start=1):
                x = block(x)
                if i == 2 and j in self.intermediates:
                    pyramid.append(x)
            pyramid.append(x)
        return self.fifth.forward_pyramid(pyramid, pyramid[-2].shape[-2:])


class GAResNet(MultiHeadModel):
    """GA-ResNet: :class:`MultiScaleResNet` + K GA branches whose gram layer is a ResNet bottleneck.

    As GA-ConvNeXt's gram layer is a ConvNeXt block and GA-CSWin's a CSWin block, GA-ResNet's is
    a block of its own backbone: a bottleneck at the gram width d (:class:`BranchBottleneck`).

    ``img_size`` is unused (any input size works); ``backbone_checkpoint`` loads a timm ResNet
    checkpoint into the trunk, as in :class:`GAHeadsModel`.
    """

    def __init__(self, model_name: str = "resnet50", fifth_dim: int = 512, num_intermediates: int = 0,
                 gram_dim: int = 192, attn_dim: int = 128, mlp_groups: int = 4, num_classes: int = 1000,
                 num_branches: int = 5, contraction_groups: int = 1, embed_groups: int = 8, in_chans: int = 3,
                 drop_path_rate: float = 0.0, backbone_checkpoint: str | os.PathLike | None = None,
                 img_size: int | None = None) -> None:
        backbone = MultiScaleResNet(model_name, fifth_dim, num_intermediates, drop_path_rate, in_chans)
        head = GramAttentionHead(fifth_dim, num_classes, num_branches, gram_dim=gram_dim,
                                 contraction_groups=contraction_groups, embed_groups=embed_groups, attn_dim=attn_dim,
                                 mlp_groups=mlp_groups, gram_layer=BranchBottleneck(gram_dim, num_branches))
        super().__init__(backbone, head)
        self.backbone_load_result = None
        if backbone_checkpoint is not None:  # a timm ResNet checkpoint for the trunk
            self.backbone_load_result = load_backbone_checkpoint(backbone.trunk, backbone_checkpoint)


# Configurations chosen to land within 3% of SPEC 2.3 (see the README's model zoo).
GA_RESNET_ARCHS = {
    "ga_resnet50": dict(model_name="resnet50", fifth_dim=512, num_intermediates=0, gram_dim=192, attn_dim=192,
                        mlp_groups=4),
}
GA_VIT_ARCHS = {
    "ga_vit_small": dict(backbone_name="vit_small_patch16_224", depth=11,
                         head_kwargs=dict(gram_dim=128, contraction_groups=1, embed_groups=8, attn_dim=96,
                                          mlp_groups=2)),
    "ga_vit_medium": dict(backbone_name="vit_base_patch16_224", embed_dim=512, num_heads=8, depth=14,
                          head_kwargs=dict(gram_dim=224, contraction_groups=1, embed_groups=8, attn_dim=160,
                                           mlp_groups=4)),
}


def _register_all() -> None:
    cfg = make_cfg((3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=0.875, num_classes=1000)
    for name, kw in GA_RESNET_ARCHS.items():
        register(__name__, name, GAResNet, cfg, **kw)
    for name, kw in GA_VIT_ARCHS.items():
        register(__name__, name, GAHeadsModel, cfg, head="ga", num_branches=5, **kw)


_register_all()
