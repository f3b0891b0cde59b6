"""Registering gaheads models with timm, and recording how each was built.

timm's ``register_model`` expects one hand-written function per name; the head variants
here (4 head kinds x 4 branch counts per backbone) are generated instead, so this module
makes the entrypoint functions and their default cfgs.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import sys
from collections.abc import Callable
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet
from torch import nn


class UnknownModelError(ValueError):
    """A model name that neither gaheads nor timm registers."""


def suggest(name: str, choices: list[str], n: int = 5) -> str:
    """'; did you mean …?' with the closest registered names, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


REGISTERED: list[str] = []
# not part of how a model is rebuilt: timm's own plumbing, placement, and a one-off backbone weight file
_NOT_RECORDED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "backbone_checkpoint", "device", "dtype",
                 "pretrained_model_args", "features_only", "out_indices", "feature_cls")
# where timm finds weights in a pretrained_cfg (``file`` for a local file or, from local-dir:, a folder)
_WEIGHT_SOURCES = ("file", "url", "hf_hub_id", "state_dict")


def has_weights(name: str, pretrained_cfg: Any = None, pretrained_cfg_overlay: dict | None = None) -> bool:
    """Whether the resolved pretrained_cfg of ``name`` names any weights to load."""
    cfg = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    return any(getattr(cfg, key, None) for key in _WEIGHT_SOURCES)


def placed(model_cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``model_cls`` taking timm's construction keywords: ``device`` (parameters and buffers are
    created there, ``"meta"`` included), ``dtype`` (floating-point tensors converted after init)
    and ``global_pool`` (``""``: no pooling, as ``reset_classifier(0, "")``)."""
    def construct(device: Any = None, dtype: torch.dtype | None = None, global_pool: str | None = None,
                  **kwargs: Any) -> nn.Module:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = model_cls(**kwargs)
        if dtype is not None:
            model.to(dtype=dtype)
        if global_pool is not None:
            model.reset_classifier(model.num_classes, global_pool)
        return model

    return construct


def features_wrapper(model: nn.Module, out_indices: Any = None, feature_cls: str | None = None) -> nn.Module:
    """timm's ``features_only=True`` for a gaheads model: its ``forward_intermediates`` levels as a list."""
    if feature_cls not in (None, "getter"):
        raise ValueError(f"features_only: gaheads models support feature_cls='getter', not {feature_cls!r}")
    n = len(model.feature_info)
    wrapped = FeatureGetterNet(model, out_indices=tuple(range(n)) if out_indices is None else out_indices,
                               output_fmt="NCHW")
    wrapped.pretrained_cfg = wrapped.default_cfg = model.pretrained_cfg
    return wrapped


def list_models(pattern: str = "*") -> list[str]:
    """Names registered by gaheads (not all of timm's), matching a shell-style pattern."""
    return sorted(n for n in REGISTERED if fnmatch.fnmatch(n, pattern))


def make_cfg(input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...],
             crop_pct: float, num_classes: int, first_conv: str, pool_size: tuple[int, int],
             interpolation: str = "bicubic", classifier: str = "head.classifier", **extra: Any) -> dict:
    """A timm pretrained_cfg for a model with no released weights.

    ``first_conv`` / ``classifier``: the modules whose ``.weight`` timm adapts to ``in_chans`` /
    drops for a new class count when loading weights; ``pool_size``: the (H, W) of the unpooled
    features at ``input_size``. ``extra``: e.g. ``fixed_input_size``, ``min_input_size``.
    """
    return dict(url="", num_classes=num_classes, input_size=input_size, pool_size=pool_size, crop_pct=crop_pct,
                interpolation=interpolation, mean=mean, std=std, first_conv=first_conv, classifier=classifier,
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
        if pretrained and not has_weights(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")):
            raise ValueError(f"{name}: no pretrained weights are published; pass pretrained_cfg_overlay=dict(file=...),"
                             " checkpoint_path=..., or load a checkpoint with gaheads.load")
        user_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_RECORDED}
        features = kwargs.pop("features_only", False)
        feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs}
        model = build_model_with_cfg(placed(model_cls), name, pretrained, **{**fixed, **kwargs})
        model.gaheads_config = {"name": name, "kwargs": user_kwargs}
        return features_wrapper(model, **feature_kwargs) if features else model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module_name
    entrypoint.__doc__ = f"{name}: {model_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
    setattr(mod, name, entrypoint)
    if name not in REGISTERED:
        REGISTERED.append(name)
    return register_model(entrypoint)
