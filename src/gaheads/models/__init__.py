"""Named models, registered with timm on import."""

from . import cct, cswin, ga_convnext, ga_timm
from .base import MultiHeadModel
from .cct import CCTModel
from .cswin import CSWinTransformer, GACSWin
from .factory import create_model
from .ga_convnext import GAConvNeXt
from .ga_timm import GAHeadsModel, GAResNet, TimmBackboneModel, load_backbone_checkpoint
from .registry import list_models

__all__ = ["CCTModel", "CSWinTransformer", "GACSWin", "GAConvNeXt", "GAHeadsModel", "GAResNet", "MultiHeadModel",
           "TimmBackboneModel", "cct", "create_model", "cswin", "ga_convnext", "ga_timm", "list_models",
           "load_backbone_checkpoint"]
