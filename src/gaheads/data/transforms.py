"""Image transforms: a thin layer over ``timm.data.create_transform`` driven by a model's data config."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image
from timm.data import auto_augment
from timm.data import create_transform as timm_create_transform

from ..preprocess import DATA_CONFIG_KEYS as _CONFIG_KEYS
from ..preprocess import eval_transform
from .errors import DataError

_TIMM_ARGS = frozenset(inspect.signature(timm_create_transform).parameters) - {"is_training"}


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **kw: Any) -> Image.Image:
    """timm's posterize, also for 0 bits kept.

    timm's 'inc' RandAugment asks for 0 bits at magnitude 10 (reached by rand-m9-mstd0.5 about
    once in 40 posterize draws); older Pillow returned a black image, Pillow 13 raises ValueError,
    which would kill a training run at random. Keep the old result: 0 bits kept is all zeros.
    """
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kw)


def _patch_posterize(transform: Any) -> None:
    """Swap in ``_posterize_any_bits`` for every posterize op inside timm's (Rand/Auto/AugMix) augment ops."""
    if isinstance(transform, auto_augment.AugmentOp):
        if transform.aug_fn is auto_augment.posterize:
            transform.aug_fn = _posterize_any_bits
        return
    for attr in ("transforms", "ops", "policy"):  # Compose, RandAugment/AugMix, AutoAugment (list of lists)
        children = getattr(transform, attr, None)
        if isinstance(children, (list, tuple)):
            for child in children:
                for op in (child if isinstance(child, (list, tuple)) else [child]):
                    _patch_posterize(op)


def create_transform(data_config: Mapping[str, Any], is_training: bool, **aug: Any) -> Callable:
    """timm's train or eval transform for ``data_config`` (input_size, mean, std, crop_pct, interpolation, crop_mode).

    ``aug`` takes timm's augmentation arguments (scale, ratio, hflip, vflip, auto_augment,
    color_jitter, re_prob, re_mode, re_count, ...) plus ``train_interpolation``, which as in
    timm's loader replaces the config's interpolation for training ('random' picks one per
    image). Eval transforms ignore the augmentation arguments, as timm's do, and are
    ``gaheads.preprocess.eval_transform``, the one predict, explain and validate use.
    """
    aug = dict(aug)
    train_interpolation = aug.pop("train_interpolation", None)
    unknown = sorted(set(aug) - _TIMM_ARGS)
    if unknown:
        raise DataError(f"unknown transform option(s) {', '.join(unknown)} (timm.data.create_transform takes "
                        f"{', '.join(sorted(_TIMM_ARGS))})")
    if "input_size" not in data_config:
        raise DataError(f"data config has no input_size (expected keys {', '.join(_CONFIG_KEYS)})")
    if not is_training:
        return eval_transform(data_config)
    kwargs = {k: data_config[k] for k in _CONFIG_KEYS if data_config.get(k) is not None}
    if is_training and train_interpolation:
        kwargs["interpolation"] = train_interpolation
    kwargs.update(aug)
    transform = timm_create_transform(is_training=is_training, **kwargs)
    _patch_posterize(transform)
    return transform
