"""Multi-branch heads on timm backbones: GA-ResNet50, GA-ViT-S/M and ``<head><K>@<timm model>``.

``TimmBackboneModel("resnet18", "ga", 5, num_classes=10)`` — or ``gaheads.create_model("ga5@resnet18")``
— puts K branches of any head on a timm model's last feature map or tokens. The features
are timm's pre-logits output with pooling disabled (``global_pool=''``): every backbone
parameter is used (e.g. ConvNeXt's final norm and MobileNetV3's head conv, which timm keeps
outside ``forward_features``). Channels-last maps (Swin) are made channels-first; ViT's
class / distillation / register tokens (``num_prefix_tokens``) are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from typing import Any

import timm
import torch
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_notrace_function
from timm.models._features import feature_take_indices
from torch import nn

from ..heads import HEADS, GramAttentionHead, create_head
from .base import MultiBranchModel, prefix_matcher
from .gram_layers import BranchBottleneck
from .multiscale import SEBottleneck, drop_neck_after_pruning, init_conv_linear, intermediate_blocks
from .registry import UnknownModelError, make_cfg, register, suggest

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


@register_notrace_function  # branches on the features' rank: an FX leaf
def head_input(y: torch.Tensor, num_prefix_tokens: int, channels_last: bool) -> torch.Tensor:
    """A timm model's unpooled pre-logits features -> the heads' input.

    Tokens (B, P+N, C) lose their P prefix (class / register) tokens -> (B, N, C); a map is made
    channels-first (B, C, H, W) when the model's output is channels-last.
    """
    if y.ndim == 3:
        return y[:, num_prefix_tokens:]
    if y.ndim == 4:
        return y.permute(0, 3, 1, 2) if channels_last else y
    raise ValueError("backbone features must be a (B, C, H, W) map or (B, N, C) tokens for the heads")


# torch.fx: a leaf wherever it is called from
torch.fx.wrap("head_input")


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
        self.feature_info = [dict(f, module=f"model.{f['module']}") for f in getattr(self.model, "feature_info", [])]

    def no_weight_decay(self) -> set[str]:
        """The timm model's own exemptions (e.g. ViT's pos_embed, cls_token)."""
        return {f"model.{n}" for n in getattr(self.model, "no_weight_decay", set)()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return prefix_matcher(self.model.group_matcher(coarse), "model.")

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """The timm model's own pruning (its layers after the last level in ``indices``, its final norm
        with ``prune_norm``, its pre-logits layers with ``prune_head``)."""
        prune = getattr(self.model, "prune_intermediate_layers", None)
        if prune is None:
            raise NotImplementedError(f"timm's {type(self.model).__name__} has no prune_intermediate_layers")
        take = prune(indices, prune_norm=prune_norm, prune_head=prune_head)
        levels = self.model.feature_info
        if max(take) < len(levels) - 1:  # the features now end at that level (older timm keeps the old count)
            self.num_features = levels[max(take)]["num_chs"]
        else:
            self.num_features = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        return take

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> (``forward_features(x)``, the timm model's intermediates, channels-first maps)."""
        final, levels = self.model.forward_intermediates(x, output_fmt="NCHW")
        return self.post(final), levels

    def post(self, y: torch.Tensor) -> torch.Tensor:
        """The timm model's unpooled features -> the heads' input: map (B, C, H, W) or patch tokens (B, N, C)."""
        return head_input(self.model.forward_head(y, pre_logits=True), self.num_prefix_tokens, self.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.model.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class TimmBackboneModel(MultiBranchModel):
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
        super().__init__(backbone, create_head(head, dim, num_classes, num_branches, **kwargs),
                         backbone_kwargs.get("in_chans", 3))
        self.pretrained_cfg = self.default_cfg = pattern_cfg(backbone.model.pretrained_cfg, num_classes, img_size)
        # how to rebuild it (checkpoints): the pattern name; the weights come from the checkpoint itself
        recorded = dict(num_classes=num_classes, head_kwargs=head_kwargs, img_size=img_size, **backbone_kwargs)
        self.gaheads_config = {"name": f"{head}{num_branches}@{backbone_name}",
                               "kwargs": {k: v for k, v in recorded.items() if v is not None}}
        self.backbone_load_result = None
        if backbone_checkpoint is not None:
            self.backbone_load_result = load_backbone_checkpoint(backbone.model, backbone_checkpoint)


# where the backbone's weights come from: not the head model's
_WEIGHT_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "file", "state_dict", "source", "tag", "architecture",
                "custom_load", "license", "origin_url", "paper_ids", "paper_name", "notes", "label_names",
                "label_descriptions")


def pattern_cfg(backbone_cfg: dict[str, Any], num_classes: int, img_size: int | None = None) -> dict[str, Any]:
    """A head model's pretrained_cfg from its timm backbone's: the backbone's preprocessing, none of its
    weight sources, ``first_conv`` under ``backbone.model.``, the head's classifier and class count."""
    cfg = {k: v for k, v in dict(backbone_cfg).items() if k not in _WEIGHT_KEYS}
    if img_size:
        hw = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        cfg["input_size"] = (cfg.get("input_size", (3, 224, 224))[0], *hw)
    first = cfg.get("first_conv") or ""
    first = [first] if isinstance(first, str) else list(first)
    cfg["first_conv"] = [f"backbone.model.{f}" for f in first if f]
    if len(cfg["first_conv"]) == 1:
        cfg["first_conv"] = cfg["first_conv"][0]
    return {**cfg, "url": "", "num_classes": num_classes, "classifier": "head.classifier"}


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


def create_pattern_model(name: str, pretrained: bool = False, pretrained_cfg_overlay: dict | None = None,
                         checkpoint_path: str | os.PathLike | None = None, **kwargs: Any) -> TimmBackboneModel:
    """Build ``<head><K>@<timm model>``; ``kwargs`` go to :class:`TimmBackboneModel` (None values: defaults).

    As ``timm.create_model``: ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)``
    loads a whole-model weight file the timm way (classifier dropped for another class count,
    first conv adapted to ``in_chans``); ``checkpoint_path`` loads a whole-model checkpoint
    strictly. Both go to the head model, not to the timm backbone inside it.
    """
    kind, k, backbone = parse_pattern(name)
    kwargs = {n: v for n, v in kwargs.items() if v is not None}
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    global_pool = kwargs.pop("global_pool", None)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = TimmBackboneModel(backbone, kind, k, **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    if pretrained:
        cfg = {**model.pretrained_cfg, **(pretrained_cfg_overlay or {})}
        if not cfg.get("file"):
            raise ValueError(f"{name}: no pretrained weights are published; pass pretrained_cfg_overlay=dict(file=...) "
                             "or checkpoint_path=...")
        timm.models.load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes,
                                    in_chans=model.in_chans)
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "file": cfg["file"]}
    if checkpoint_path:
        timm.models.load_checkpoint(model, checkpoint_path)
    if global_pool is not None:
        model.reset_classifier(model.num_classes, global_pool)
    return model


def model_pretrained_cfg(name: str) -> dict[str, Any] | None:
    """The timm pretrained cfg a model name trains with, without building the model.

    A registered name gives its own cfg; ``<head><K>@<timm model>`` gives the backbone's (its
    input size, mean / std, crop and interpolation), as :class:`TimmBackboneModel` uses. None for a
    name timm registers without a cfg; UnknownModelError for an unknown name or a bad pattern.
    """
    if "@" in name:
        name = parse_pattern(name)[2]
    elif not timm.is_model(name):
        raise UnknownModelError(f"unknown model {name!r}{suggest(name, timm.list_models())}")
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else None


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
        # a non-empty list of ints for TorchScript: with no intermediates, block -1 (never reached)
        self.intermediates = sorted(self.intermediates) or [-1]
        self.num_stages = 4  # trunk stages kept (prune_intermediate_layers lowers it)
        self.has_neck = True  # False once prune_intermediate_layers removed the fifth stage
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=c, reduction=4 * 2**i, module=f"trunk.layer{i + 1}")
                             for i, c in enumerate(widths)]

    levels_channels_last = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^trunk\.layer(\d+)" if coarse else r"^trunk\.layer(\d+)\.(\d+)"
        return dict(stem=r"^trunk\.(?:conv1|bn1)", blocks=[(blocks, None), (r"^fifth", (99999,))])

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image -> [layer1, layer2, layer3 after blocks n, …, a·n, layer3, layer4] (up to the kept stages)."""
        t = self.trunk
        x = t.maxpool(t.act1(t.bn1(t.conv1(x))))
        pyramid: list[torch.Tensor] = []
        # the four stages written out: TorchScript iterates a module's children, not a tuple of modules
        for block in t.layer1:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        pyramid.append(x)
        # pruned stages are empty Sequentials: their loops run no block, and they add no level
        for block in t.layer2:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.num_stages > 1:
            pyramid.append(x)
        j = 0
        for block in t.layer3:
            j += 1
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if j in self.intermediates:
                pyramid.append(x)
        if self.num_stages > 2:
            pyramid.append(x)
        for block in t.layer4:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.num_stages > 3:
            pyramid.append(x)
        return pyramid

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> (X, the trunk stage outputs: four, fewer once pruned)."""
        pyramid = self.forward_pyramid(x)
        extra = len(pyramid) - self.num_stages  # layer3's intermediates, in the pyramid after layer2
        stage_maps = pyramid[:2] + pyramid[2 + extra:]
        if not self.has_neck:
            return pyramid[-1], stage_maps
        return self.fifth.forward_pyramid(pyramid, pyramid[-2].shape[-2:]), stage_maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> X (B, D, H/16, W/16); once pruned, the last kept stage's map."""
        pyramid = self.forward_pyramid(x)
        if not self.has_neck:
            return pyramid[-1]
        return self.fifth.forward_pyramid(pyramid, pyramid[-2].shape[-2:])

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the trunk stages after the last level in ``indices``; with ``prune_head`` (forced when a
        stage goes: the neck reads all four) also the SE-bottleneck fifth stage. There is no final norm."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        for i in range(max_index + 1, 4):
            setattr(self.trunk, f"layer{i + 1}", nn.Sequential())  # empty: forward_pyramid skips it
        self.num_stages = max_index + 1
        drop_neck_after_pruning(self, max_index, prune_head)
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class GAResNet(MultiBranchModel):
    """GA-ResNet: :class:`MultiScaleResNet` + K GA branches whose gram layer is a ResNet bottleneck.

    As GA-ConvNeXt's gram layer is a ConvNeXt block and GA-CSWin's a CSWin block, GA-ResNet's is
    a block of its own backbone: a bottleneck at the gram width d (:class:`BranchBottleneck`).

    ``img_size`` is unused (any input size works); ``backbone_checkpoint`` loads a timm ResNet
    checkpoint into the trunk, as in :class:`TimmBackboneModel`.
    """

    def __init__(self, model_name: str = "resnet50", fifth_dim: int = 512, num_intermediates: int = 0,
                 gram_dim: int = 192, attn_dim: int = 128, mlp_groups: int = 4, num_classes: int = 1000,
                 num_branches: int = 5, contraction_groups: int = 1, embed_groups: int = 8, in_chans: int = 3,
                 drop_path_rate: float = 0.0, backbone_checkpoint: str | os.PathLike | None = None,
                 img_size: int | None = None) -> None:
        backbone = MultiScaleResNet(model_name, fifth_dim, num_intermediates, drop_path_rate, in_chans)
        head = GramAttentionHead(fifth_dim, num_classes, num_branches, gram_dim=gram_dim,
                                 contraction_groups=contraction_groups, embed_groups=embed_groups, attn_dim=attn_dim,
                                 mlp_groups=mlp_groups,  # gram layers: the full drop-path rate
                                 gram_layer=BranchBottleneck(gram_dim, num_branches, drop_path=drop_path_rate))
        super().__init__(backbone, head, in_chans)
        self.backbone_load_result = None
        if backbone_checkpoint is not None:  # a timm ResNet checkpoint for the trunk
            self.backbone_load_result = load_backbone_checkpoint(backbone.trunk, backbone_checkpoint)


# Configurations chosen to land within 3% of the GA paper's Table 3 (see the README's model zoo).
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
    cfg = make_cfg((3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=0.875, num_classes=1000,
                   first_conv="backbone.trunk.conv1", pool_size=(14, 14))
    for name, kw in GA_RESNET_ARCHS.items():
        register(__name__, name, GAResNet, cfg, **kw)
    vit_cfg = {**cfg, "first_conv": "backbone.model.patch_embed.proj", "fixed_input_size": True}
    for name, kw in GA_VIT_ARCHS.items():
        register(__name__, name, TimmBackboneModel, vit_cfg, head="ga", num_branches=5, **kw)


_register_all()
