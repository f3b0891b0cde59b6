"""Named models, registered with timm on import."""

from . import cct
from .base import MultiHeadModel
from .cct import CCTModel
from .factory import create_model
from .registry import list_models

__all__ = ["CCTModel", "MultiHeadModel", "cct", "create_model", "list_models"]
