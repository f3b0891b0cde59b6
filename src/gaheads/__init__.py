"""gaheads: Gramian Attention and SeqAttention multi-branch heads for timm image classifiers.

``import gaheads`` registers every model with timm: ``timm.create_model('ga8_cct_7_3x1_32')``.
"""

from . import models
from .attention_maps import explain
from .checkpoint import load, save_weights
from .heads import create_head
from .inference import predict
from .loss import LossParts, MultiHeadLoss, create_task_loss
from .models import MultiHeadModel, create_model, list_models

__version__ = "0.1.0"

__all__ = ["LossParts", "MultiHeadLoss", "MultiHeadModel", "create_head", "create_model", "create_task_loss",
           "explain", "list_models", "load", "models", "predict", "save_weights", "__version__"]
