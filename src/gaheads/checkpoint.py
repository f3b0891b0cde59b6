"""Checkpoints and weights on disk: atomic writes, verified reads, rebuilding a model from its config.

Two formats:
- a training checkpoint (``torch.save`` of a dict, FORMAT key ``gaheads-checkpoint/1``) with
  ``model_config``, ``model`` (state dict), ``data_config``, ``class_names`` and whatever the
  trainer adds (optimizer, scheduler, scaler, ema, epoch, step, rng, args, metrics);
- released weights: ``NAME.safetensors`` plus ``NAME.json`` holding ``model_config``,
  ``data_config`` and ``class_names`` — enough for ``load`` without the training code.

``model_config`` is ``{"name": registered model name, "kwargs": constructor kwargs}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "gaheads-checkpoint/1"
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` via ``write(tmp_path)`` to a temp file in the same folder, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` made atomic."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def model_config(model: nn.Module) -> dict[str, Any]:
    """How ``model`` was built: ``{"name", "kwargs"}`` (set by gaheads' and ``create_model``'s entrypoints)."""
    cfg = getattr(model, "gaheads_config", None)
    if cfg is None:
        name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        cfg = {"name": name, "kwargs": {"num_classes": getattr(model, "num_classes", None)}}
    return json.loads(json.dumps(cfg))  # a plain, JSON-safe copy


def data_config(model: nn.Module) -> dict[str, Any]:
    """Preprocessing from the model's pretrained_cfg: input_size, mean, std, crop_pct, interpolation."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from a ``model_config``."""
    from .models.factory import create_model

    return create_model(config["name"], **dict(config.get("kwargs", {})))


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or wrongly shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("shape mismatch", shapes), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{label} [{len(keys)}]: {shown}")
        raise CheckpointError(f"{what} does not fit this model ({model_config(model)['name']}): " + "; ".join(parts))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a training checkpoint; a one-line CheckpointError for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, wrong file type, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a gaheads checkpoint (expected format {FORMAT!r})")
    return ckpt


def save_weights(model: nn.Module, path: str | os.PathLike, class_names: list[str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors) and its config ``path.with_suffix('.json')``, both atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    meta = {"format": "gaheads-weights/1", "model_config": model_config(model), "data_config": data_config(model),
            "class_names": class_names, **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    cfg_path = path.with_suffix(".json")
    atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path, cfg_path


def load(path: str | os.PathLike, use_ema: bool = True, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model, in eval mode, from a training checkpoint or safetensors + JSON.

    The model carries ``data_config`` (its preprocessing) and ``class_names``. With
    ``use_ema`` a checkpoint's EMA weights are used when it has them.
    """
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        from safetensors.torch import load_file

        weights, cfg_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for p in (weights, cfg_path):
            if not p.is_file():
                raise CheckpointError(f"no {p.suffix} file at {p} (weights need both .safetensors and .json)")
        meta = json.loads(cfg_path.read_text())
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e
    else:
        meta = load_checkpoint(path, map_location)
        state = meta["ema"] if use_ema and meta.get("ema") is not None else meta["model"]
    model = build_model(meta["model_config"])
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    model.data_config = meta.get("data_config") or data_config(model)
    model.class_names = meta.get("class_names")
    return model.eval()
