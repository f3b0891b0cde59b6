"""The CCT family with every head, SPEC 2.1: ``cct_7_3x1_32`` and ``{ga,seqattn,sg,at}{1,2,4,8}_cct_*``.

Branch counts mean what the names say (``seqattn1`` has one branch); the research code's
``*1_cct`` constructors built 8 branches — see the README's head-count note.
"""

from __future__ import annotations

from typing import Any

from ..backbones.cct import CCT
from ..heads import create_head
from .base import MultiHeadModel
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


def head_kwargs(kind: str, dim: int) -> dict[str, Any]:
    """CCT head settings: GA uses d = 64, contraction groups 8; attention e = C/4, m = 2."""
    gram = dict(gram_dim=64, contraction_groups=8, embed_groups=8)
    attn = dict(attn_dim=dim // 4, mlp_groups=2)
    return {"ga": {**gram, **attn}, "sg": gram, "seqattn": attn, "at": attn, "seqpool": {}}[kind]


class CCTModel(MultiHeadModel):
    """CCT backbone + any head. ``head`` is ``seqpool`` (CCT's own), ``ga``, ``seqattn``, ``sg`` or ``at``."""

    def __init__(self, img_size: int = 32, num_classes: int = 100, in_chans: int = 3, head: str = "seqpool",
                 num_branches: int = 1, embed_dim: int = 256, depth: int = 7, num_heads: int = 4,
                 mlp_ratio: float = 2.0, kernel_size: int = 3, num_conv_layers: int = 1, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.1, drop_path_rate: float = 0.1, **head_overrides: Any) -> None:
        backbone = CCT(img_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, kernel_size, num_conv_layers,
                       drop_rate, attn_drop_rate, drop_path_rate)
        kwargs = {**head_kwargs(head, embed_dim), **head_overrides}
        super().__init__(backbone, create_head(head, embed_dim, num_classes, num_branches, **kwargs))
        self.img_size = img_size


def _register_all() -> None:
    for arch, arch_kwargs in CCT_ARCHS.items():
        cfg = make_cfg((3, 32, 32), CIFAR100_MEAN, CIFAR100_STD, crop_pct=1.0, num_classes=100)
        register(__name__, arch, CCTModel, cfg, head="seqpool", num_branches=1, **arch_kwargs)
        for kind in HEAD_KINDS:
            for k in BRANCH_COUNTS:
                register(__name__, f"{kind}{k}_{arch}", CCTModel, cfg, head=kind, num_branches=k, **arch_kwargs)


_register_all()
