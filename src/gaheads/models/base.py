"""The model contract shared by every gaheads model: a backbone, a K-branch head, timm-style methods."""

# no `from __future__ import annotations`: torch.fx copies the forward annotations of the traced root
# into its generated code, and TorchScript cannot resolve them there as strings

from typing import Any

import torch
from timm.models import register_notrace_function
from timm.models._features import feature_take_indices
from torch import nn

from ..heads import ClassAttentionBlock, MultiBranchHead
from ..heads.common import BranchLayerNorm


def prefix_matcher(matcher: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A timm ``group_matcher`` dict of ``^``-anchored regexes, re-anchored under ``prefix`` (``"backbone."``)."""
    def fix(regex: str) -> str:
        # the group keeps a top-level alternation ("^conv1|bn1") under the prefix
        return "^" + prefix.replace(".", r"\.") + "(?:" + regex[1:] + ")" if regex.startswith("^") else regex

    out: dict[str, Any] = {}
    for key, value in matcher.items():
        if isinstance(value, str):
            out[key] = fix(value)
        elif isinstance(value, (list, tuple)):
            out[key] = [(fix(r), rest) if isinstance(r, str) else r for r, rest in
                        (v if isinstance(v, (list, tuple)) else (v, None) for v in value)]
        else:
            out[key] = value
    return out


def to_output_fmt(x: torch.Tensor, channels_last: bool, output_fmt: str) -> torch.Tensor:
    """A (B, C, H, W) map (or (B, H, W, C) with ``channels_last``) in timm's ``NCHW`` / ``NHWC`` layout."""
    if str(output_fmt).upper().endswith("NHWC"):
        return x if channels_last else x.permute(0, 2, 3, 1)
    return x.permute(0, 3, 1, 2) if channels_last else x


@register_notrace_function  # torch.fx sees ``return_branches`` as a graph input: keep the choice out of the graph
def ensemble_or_branches(logits: torch.Tensor, return_branches: bool) -> torch.Tensor:
    """Per-branch logits (B, K, n) -> themselves, or their mean (B, n)."""
    return logits if return_branches else logits.mean(dim=1)


class MultiBranchModel(nn.Module):
    """A backbone whose features feed a K-branch head.

    - ``forward_features(x)``: the backbone's tokens (B, N, C) or map (B, C, H, W)
    - ``forward_heads(x)``: per-branch logits (B, K, num_classes)
    - ``forward_head(features, pre_logits=False)``: ensemble logits (B, num_classes) — the
      mean of the branches — or with ``pre_logits`` the mean branch embedding (B, C)
    - ``forward(x)``: ensemble logits; ``forward(x, return_branches=True)``: per-branch
      logits, which is what training uses (DDP only sees calls to ``forward``)
    """

    # where timm's tests look for the unpooled feature map; token models override with "NLC"
    output_fmt = "NCHW"

    def __init__(self, backbone: nn.Module, head: MultiBranchHead, in_chans: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = self.head_hidden_size = head.dim
        self.in_chans = in_chans
        self.global_pool = "head"  # "" (set by reset_classifier(0, "")): forward returns the unpooled features
        self.grad_checkpointing = False
        self.head_pruned = False  # True once prune_intermediate_layers removed the head
        # timm feature_info: the backbone's levels, named from the model's root
        self.feature_info = [dict(info, module=f"backbone.{info['module']}")
                             for info in getattr(backbone, "feature_info", [])]

    @property
    def num_classes(self) -> int:
        return 0 if self.head_pruned else self.head.num_classes

    @property
    def num_branches(self) -> int:
        return 0 if self.head_pruned else self.head.num_branches

    def get_classifier(self) -> nn.Module:
        return self.head if self.head_pruned else self.head.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New per-branch classifiers (none for 0), like timm: ``forward`` then returns the pooled
        (B, C) embedding; with ``global_pool=""`` (only with 0 classes) the unpooled features."""
        if global_pool is not None:
            if global_pool and global_pool != "head":
                raise ValueError(f"global_pool {global_pool!r}: the K-branch head is the pooling; use '' or None")
            if not global_pool and num_classes:
                raise ValueError("global_pool='' (unpooled features) needs num_classes=0")
            self.global_pool = global_pool or ""
        if self.head_pruned:
            if num_classes or self.global_pool:
                raise ValueError("the head was removed by prune_intermediate_layers: only num_classes=0 with "
                                 "global_pool='' is possible")
            return
        self.head.reset_classifier(num_classes)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's blocks in the backward pass (less activation memory)."""
        if not hasattr(self.backbone, "set_grad_checkpointing"):
            raise NotImplementedError(f"{type(self.backbone).__name__} has no gradient checkpointing")
        self.backbone.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups (for ``layer_decay``): the backbone's stem and blocks; the head is the last group."""
        matcher = getattr(self.backbone, "group_matcher", None)
        if matcher is None:
            return dict(stem=r"^backbone\.", blocks=[(r"^head\.", (99999,))])
        return prefix_matcher(matcher(coarse), "backbone.")

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's intermediate-features API: the backbone levels listed in ``feature_info``.

        Returns ``(forward_features(x), [levels])`` or, with ``intermediates_only``, the list;
        levels are (B, C, H, W) (``output_fmt="NHWC"``: channels-last). ``indices``: an int n
        (the last n levels) or a list. ``norm`` and ``stop_early`` are accepted for timm's API
        and change nothing: every level is computed in the one pass that gives the features.
        """
        take, _ = feature_take_indices(len(self.feature_info), indices)
        final, levels = self.backbone.forward_levels(x)
        channels_last = bool(getattr(self.backbone, "levels_channels_last", False))
        picked = [to_output_fmt(levels[i], channels_last, output_fmt) for i in take]
        return picked if intermediates_only else (final, picked)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's pruning API: remove what the ``feature_info`` levels in ``indices`` do not need.

        The backbone loses the stages after the last kept level. Pruning before the last level,
        or with ``prune_head``, also removes the head and whatever only feeds it (the GA models'
        multi-scale neck, which reads every stage): ``forward`` and ``forward_features`` then give
        the backbone's last kept output. ``prune_norm`` removes the backbone's final norm.
        Returns the kept level indices, for ``forward_intermediates(x, indices=...)``.
        """
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        prune = getattr(self.backbone, "prune_intermediate_layers", None)
        if prune is None:
            raise NotImplementedError(f"{type(self.backbone).__name__} cannot be pruned")
        drop_head = prune_head or max_index < len(self.feature_info) - 1
        prune(take, prune_norm=prune_norm, prune_head=drop_head)
        if drop_head:
            self.head = nn.Identity()
            self.head_pruned = True
            self.global_pool = ""  # forward returns the features
            self.num_features = self.head_hidden_size = self.backbone.num_features
        return take

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that are 1-D per branch (norm weights, LayerScale) plus the backbone's own."""
        names = {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", lambda: ())()}
        for mod_name, mod in self.named_modules():
            if isinstance(mod, BranchLayerNorm):
                names.add(f"{mod_name}.weight")
            elif isinstance(mod, ClassAttentionBlock):
                names |= {f"{mod_name}.gamma1", f"{mod_name}.gamma2"}
        return names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # a module call: torch.fx then sees the backbone module's helpers

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x  # no pooling (and no classifier): reset_classifier(0, "")
        return self.head(x, pre_logits=pre_logits).mean(dim=1)

    def forward_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> per-branch logits (B, K, num_classes)."""
        return self.head(self.forward_features(x))

    def forward(self, x: torch.Tensor, return_branches: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return self.forward_features(x)
        return ensemble_or_branches(self.forward_heads(x), return_branches)
