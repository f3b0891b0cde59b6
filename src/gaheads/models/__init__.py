"""Named models, registered with timm on import."""

from ..deprecation import renamed
from . import cct, cswin, ga_convnext, ga_timm
from .base import MultiBranchModel
from .cct import CCTModel
from .cswin import CSWinTransformer, GACSWin
from .factory import create_model
from .ga_convnext import GAConvNeXt
from .ga_timm import GAResNet, TimmBackboneModel, load_backbone_checkpoint
from .registry import list_models

__all__ = ["CCTModel", "CSWinTransformer", "GACSWin", "GAConvNeXt", "GAResNet", "MultiBranchModel",
           "TimmBackboneModel", "cct", "create_model", "cswin", "ga_convnext", "ga_timm", "list_models",
           "load_backbone_checkpoint"]

__getattr__ = renamed(__name__, {"MultiHeadModel": "MultiBranchModel", "GAHeadsModel": "TimmBackboneModel"},
                      lambda name: globals()[name])
