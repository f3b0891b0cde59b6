"""The papers' heads, usable on any (B, C, H, W) feature map or (B, N, C) token sequence.

Every head returns per-branch logits (B, K, num_classes); the prediction is their mean.
"""

from __future__ import annotations

from .class_attention import ClassAttentionBlock
from .common import MultiBranchHead, gram_vector, to_tokens
from .gram import GramAttentionHead, GramEmbedding, SimpleGramHead
from .seq import AttentionOnlyHead, SeqAttentionHead, SeqPoolHead

HEADS: dict[str, type[MultiBranchHead]] = {
    "ga": GramAttentionHead,
    "gram": GramAttentionHead,
    "seqattn": SeqAttentionHead,
    "seqpool": SeqPoolHead,
    "sg": SimpleGramHead,
    "at": AttentionOnlyHead,
}


def create_head(kind: str, dim: int, num_classes: int, num_branches: int = 1, **kwargs) -> MultiBranchHead:
    """Build a head by name: ``ga``/``gram``, ``seqattn``, ``seqpool``, ``sg`` or ``at``."""
    try:
        cls = HEADS[kind]
    except KeyError:
        raise ValueError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}") from None
    return cls(dim, num_classes, num_branches, **kwargs)


__all__ = [
    "HEADS", "AttentionOnlyHead", "ClassAttentionBlock", "GramAttentionHead", "GramEmbedding",
    "MultiBranchHead", "SeqAttentionHead", "SeqPoolHead", "SimpleGramHead", "create_head", "gram_vector",
    "to_tokens",
]
