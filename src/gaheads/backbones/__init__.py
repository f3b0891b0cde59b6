"""Backbones timm lacks."""

from .cct import CCT, ConvTokenizer

__all__ = ["CCT", "ConvTokenizer"]
