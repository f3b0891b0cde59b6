"""Backbones timm lacks."""

from .cct import CCT, ConvTokenizer
from .cswin import CSWin, CSWinBlock

__all__ = ["CCT", "CSWin", "CSWinBlock", "ConvTokenizer"]
