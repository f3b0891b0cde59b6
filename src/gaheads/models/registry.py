"""Registering gaheads models with timm, and recording how each was built.

timm's ``register_model`` expects one hand-written function per name; the head variants
here (4 head kinds x 4 branch counts per backbone) are generated instead, so this module
makes the entrypoint functions and their default cfgs.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

REGISTERED: list[str] = []
# not part of how a model is rebuilt: timm's own plumbing, and a one-off backbone weight file
_NOT_RECORDED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "backbone_checkpoint")


def list_models(pattern: str = "*") -> list[str]:
    """Names registered by gaheads (not all of timm's), matching a shell-style pattern."""
    return sorted(n for n in REGISTERED if fnmatch.fnmatch(n, pattern))


def make_cfg(input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...],
             crop_pct: float, num_classes: int, interpolation: str = "bicubic", **extra: Any) -> dict:
    """A timm pretrained_cfg for a model with no released weights."""
    return dict(url="", num_classes=num_classes, input_size=input_size, pool_size=None, crop_pct=crop_pct,
                interpolation=interpolation, mean=mean, std=std, first_conv="", classifier="head.classifier",
                **extra)


def register(module_name: str, name: str, model_cls: Callable[..., nn.Module], cfg: dict,
             **fixed: Any) -> Callable[..., nn.Module]:
    """Register ``name`` with timm: ``timm.create_model(name, **kw)`` builds ``model_cls(**fixed, **kw)``.

    The built model gets ``gaheads_config = {"name", "kwargs"}`` so checkpoints can rebuild it.
    """
    mod = sys.modules[module_name]
    if not hasattr(mod, "default_cfgs"):
        mod.default_cfgs = {}
    mod.default_cfgs.update(generate_default_cfgs({name: cfg}))

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are published; load a checkpoint with gaheads.load")
        user_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_RECORDED}
        model = build_model_with_cfg(model_cls, name, pretrained, **{**fixed, **kwargs})
        model.gaheads_config = {"name": name, "kwargs": user_kwargs}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module_name
    entrypoint.__doc__ = f"{name}: {model_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
    setattr(mod, name, entrypoint)
    if name not in REGISTERED:
        REGISTERED.append(name)
    return register_model(entrypoint)
