"""``create_model``: timm's factory with a clear error for unknown names."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from .ga_timm import create_pattern_model
from .registry import UnknownModelError, suggest


def create_model(name: str, num_classes: int | None = None, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build any registered model (gaheads' or timm's) by name.

    ``num_classes`` / ``img_size`` are passed only when given, so a model's defaults stand.
    ``<head><K>@<timm model>`` (e.g. ``ga5@resnet18``) puts K branches of a head on any timm model.
    """
    if "@" in name:
        return create_pattern_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    if not timm.is_model(name):
        raise UnknownModelError(f"unknown model {name!r}{suggest(name, timm.list_models())}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    return timm.create_model(name, **kwargs)
