"""The CCT family with every head: ``cct_7_3x1_32`` and ``{ga,seqattn,sg,at}{1,2,4,8}_cct_*``.

Branch counts mean what the names say (``seqattn1`` has one branch); the research code's
``*1_cct`` constructors built 8 branches — see the README's head-count note.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.models._features import feature_take_indices
from torch import nn

from ..backbones.cct import CCT, add_pos_embed
from ..heads import create_head
from .base import MultiBranchModel
from .registry import make_cfg, register

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

CCT_ARCHS: dict[str, dict[str, Any]] = {
    "cct_2_3x2_32": dict(embed_dim=128, depth=2, num_heads=2, mlp_ratio=1.0, kernel_size=3, num_conv_layers=2),
    "cct_4_3x2_32": dict(embed_dim=128, depth=4, num_heads=2, mlp_ratio=1.0, kernel_size=3, num_conv_layers=2),
    "cct_7_3x1_32": dict(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, kernel_size=3, num_conv_layers=1),
}
HEAD_KINDS = ("ga", "seqattn", "sg", "at")
BRANCH_COUNTS = (1, 2, 4, 8)


def head_kwargs(kind: str, dim: int, num_tokens: int | None = None) -> dict[str, Any]:
    """CCT head settings: GA uses d = 64, contraction groups 8; attention e = C/4, m = 2; the AT
    query is the released token-axis Linear over ``num_tokens`` tokens."""
    gram = dict(gram_dim=64, contraction_groups=8, embed_groups=8)
    attn = dict(attn_dim=dim // 4, mlp_groups=2)
    at = dict(attn, query="token_linear", num_tokens=num_tokens)
    return {"ga": {**gram, **attn}, "sg": gram, "seqattn": attn, "at": at, "seqpool": {}}[kind]


# the head layers that are Conv2d in both research releases (GA contraction, gram embedding, the
# class-attention MLP); the releases initialise only Linear/LayerNorm/BatchNorm, so these keep
# PyTorch's default Conv2d init
RELEASE_CONV_LAYERS = ("query.contract", "query.embed", "block.fc1", "block.fc2")
HEAD_INITS = ("release", "trunc_normal")


@torch.no_grad()
def pytorch_conv_init_(head: nn.Module) -> nn.Module:
    """Give the head's batched stand-ins of the releases' Conv2d layers PyTorch's default Conv2d init.

    That default is Kaiming-uniform with a = √5 and a uniform bias, both U(-1/√fan_in, 1/√fan_in),
    fan_in = in_channels / groups (weight std 1/√(3·fan_in): 0.102, 0.036, 0.051, 0.026 for the CCT
    contraction, embedding, fc1, fc2). Each stacked weight (K, g, out/g, in/g) has fan_in = in/g.
    """
    for name, m in head.named_modules():
        if name in RELEASE_CONV_LAYERS:
            bound = 1.0 / math.sqrt(m.weight.shape[-1])
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -bound, bound)
    return head


class CCTBackbone(CCT):
    """:class:`CCT` with timm's feature API: ``feature_info`` (the tokenizer and every encoder
    layer), ``forward_levels``, gradient checkpointing and layer groups."""

    levels_channels_last = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reduction = 2 ** self.tokenizer.num_layers
        self.feature_info = [dict(num_chs=self.embed_dim, reduction=reduction, module="tokenizer")]
        self.feature_info += [dict(num_chs=self.embed_dim, reduction=reduction, module=f"blocks.{i}")
                              for i in range(len(self.blocks))]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the encoder layers up to the last level in ``indices`` (level 0: the tokenizer, no layer);
        ``prune_norm`` removes the final LayerNorm. The head is the model's: ``prune_head`` changes nothing here."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.blocks = self.blocks[:max_index]
        if prune_norm:
            self.norm = nn.Identity()
        return take

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^(?:tokenizer|pos_embed)", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> (``forward_features(x)``, [tokenizer map, each layer's output map], maps (B, C, h, w))."""
        h, w = self.grid_size
        as_map = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, h, w)  # noqa: E731
        tokens = self.tokenizer(x)
        levels = [as_map(tokens)]
        x = self.pos_drop(add_pos_embed(tokens, self.pos_embed))
        for block in self.blocks:
            x = block(x)
            levels.append(as_map(x))
        return self.norm(x), levels


class CCTModel(MultiBranchModel):
    """CCT backbone + any head. ``head`` is ``seqpool`` (CCT's own), ``ga``, ``seqattn``, ``sg`` or ``at``.

    ``forward_features`` gives tokens (B, N, C) (timm's ``NLC``). The defaults reproduce the
    research releases; each differing choice is an option (docs/fidelity.md):

    - ``head_init``: ``"release"`` (the head's conv-layer stand-ins get PyTorch's default Conv2d
      init, as the releases leave them) or ``"trunc_normal"`` (std 0.02, zero bias).
    - ``norm_eps``: the encoder's LayerNorm eps, 1e-5.
    - ``encoder_attention``: ``"softmax"``, or ``"identity"`` for the released SG ablation's
      attention-free encoder.
    - for ``head="at"``: ``query="token_linear"`` (released) or ``query="softmax"``.
    """

    output_fmt = "NLC"

    def __init__(self, img_size: int | tuple[int, int] = 32, num_classes: int = 100, in_chans: int = 3,
                 head: str = "seqpool",
                 num_branches: int = 1, embed_dim: int = 256, depth: int = 7, num_heads: int = 4,
                 mlp_ratio: float = 2.0, kernel_size: int = 3, num_conv_layers: int = 1, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.1, drop_path_rate: float = 0.1, head_init: str = "release",
                 norm_eps: float = 1e-5, encoder_attention: str = "softmax", **head_overrides: Any) -> None:
        if isinstance(img_size, (tuple, list)):  # timm passes the cfg's (H, W) for fixed-size models
            if len(set(img_size)) != 1:
                raise ValueError(f"CCT takes square inputs, got img_size={tuple(img_size)}")
            img_size = int(img_size[0])
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {list(HEAD_INITS)}, got {head_init!r}")
        backbone = CCTBackbone(img_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, kernel_size, num_conv_layers,
                       drop_rate, attn_drop_rate, drop_path_rate, norm_eps=norm_eps,
                       encoder_attention=encoder_attention)
        num_tokens = backbone.grid_size[0] * backbone.grid_size[1]
        kwargs = {**head_kwargs(head, embed_dim, num_tokens), **head_overrides}
        if kwargs.get("query") == "softmax":
            kwargs.pop("num_tokens", None)
        built_head = create_head(head, embed_dim, num_classes, num_branches, **kwargs)
        if head_init == "release":
            pytorch_conv_init_(built_head)
        super().__init__(backbone, built_head, in_chans)
        self.img_size = img_size


def _register_all() -> None:
    for arch, arch_kwargs in CCT_ARCHS.items():
        side = 32 // 2 ** arch_kwargs["num_conv_layers"]
        cfg = make_cfg((3, 32, 32), CIFAR100_MEAN, CIFAR100_STD, crop_pct=1.0, num_classes=100,
                       first_conv="backbone.tokenizer.layers.0", pool_size=(side, side), fixed_input_size=True)
        register(__name__, arch, CCTModel, cfg, head="seqpool", num_branches=1, **arch_kwargs)
        for kind in HEAD_KINDS:
            for k in BRANCH_COUNTS:
                register(__name__, f"{kind}{k}_{arch}", CCTModel, cfg, head=kind, num_branches=k, **arch_kwargs)


_register_all()
