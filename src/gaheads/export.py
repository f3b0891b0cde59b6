"""Shipping a trained model: ONNX (dynamic batch), TorchScript, each checked against PyTorch.

Both graph formats output the ensemble logits (B, num_classes) as ``logits``; with
``branches=True`` a second output ``branch_logits`` (B, K, num_classes) holds every branch.
``check_*`` run the exported file and the PyTorch model on the same random images at
several batch sizes and return the largest absolute difference over all outputs.
(safetensors + JSON export is ``gaheads.checkpoint.save_weights``.)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write
from .optional import require

CHECK_BATCH_SIZES = (1, 3)


class ExportError(RuntimeError):
    """An export that failed, or whose output does not match PyTorch."""


class ExportWrapper(nn.Module):
    """``images (B, 3, H, W)`` -> ensemble logits, or (ensemble logits, branch logits) with ``branches``."""

    def __init__(self, model: nn.Module, branches: bool = False) -> None:
        super().__init__()
        self.model, self.branches = model, branches

    def forward(self, images: torch.Tensor):
        branch_logits = self.model(images, return_branches=True)
        logits = branch_logits.mean(dim=1)
        return (logits, branch_logits) if self.branches else logits


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects, from ``data_config`` or timm's pretrained_cfg."""
    from .preprocess import resolve_data_config

    return tuple(resolve_data_config(model)["input_size"])


def example_images(model: nn.Module, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal images (about what normalised inputs look like)."""
    gen = torch.Generator().manual_seed(seed + batch_size)
    return torch.randn(batch_size, *input_shape(model), generator=gen)


def output_names(branches: bool) -> list[str]:
    return ["logits", "branch_logits"] if branches else ["logits"]


def export_onnx(model: nn.Module, path: str | os.PathLike, branches: bool = False,
                opset_version: int | None = None) -> Path:
    """Export with torch's dynamo ONNX exporter; input ``images`` with a dynamic batch axis.

    The TorchScript-based exporter cannot keep the batch axis dynamic through the heads'
    LayerNorm/einsum reshapes, so the torch.export-based one is used. The file carries
    :func:`onnx_metadata` in its ``metadata_props`` and in ``<path>.json`` beside it.
    """
    for package in ("onnx", "onnxscript"):
        require(package, "export", "ONNX export")
    model = model.eval()
    wrapper = ExportWrapper(model, branches).eval()
    x = example_images(model, 2).to(model_device(model))
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x,), tmp, input_names=["images"], output_names=output_names(branches),
                              dynamo=True, dynamic_shapes={"images": {0: batch}}, external_data=False,
                              opset_version=opset_version, verbose=False)

    try:
        atomic_write(path, write)
    except Exception as e:
        raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return write_onnx_metadata(path, model)[0]  # self-describing: preprocessing and classes inside and beside it


def _torch_outputs(model: nn.Module, x: torch.Tensor, branches: bool) -> list[torch.Tensor]:
    with torch.no_grad():
        out = ExportWrapper(model.eval(), branches)(x.to(model_device(model)))
    return [o.cpu() for o in out] if isinstance(out, tuple) else [out.cpu()]


def check_onnx(path: str | os.PathLike, model: nn.Module, batch_sizes: Sequence[int] = CHECK_BATCH_SIZES) -> float:
    """Max |onnxruntime - PyTorch| over all outputs and the given batch sizes."""
    ort = require("onnxruntime", "export", "checking an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    branches = len(session.get_outputs()) == 2
    worst = 0.0
    for bs in batch_sizes:
        x = example_images(model, bs)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        for g, ref in zip(got, _torch_outputs(model, x, branches)):
            if tuple(g.shape) != tuple(ref.shape):
                raise ExportError(f"ONNX output shape {tuple(g.shape)} != PyTorch {tuple(ref.shape)} at batch {bs}")
            worst = max(worst, float((torch.from_numpy(g) - ref).abs().max()))
    return worst


def export_torchscript(model: nn.Module, path: str | os.PathLike, branches: bool = False) -> Path:
    """``torch.jit.trace`` of the model (eval mode), saved with ``torch.jit.save``."""
    for package in ("onnx", "onnxscript"):
        require(package, "export", "ONNX export")
    model = model.eval()
    wrapper = ExportWrapper(model, branches).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from static shapes
        try:
            traced = torch.jit.trace(wrapper, example_images(model, 2).to(model_device(model)), check_trace=False)
        except Exception as e:
            raise ExportError(f"TorchScript trace failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))


def check_torchscript(path: str | os.PathLike, model: nn.Module,
                      batch_sizes: Sequence[int] = CHECK_BATCH_SIZES) -> float:
    """Max |TorchScript - PyTorch| over all outputs and the given batch sizes."""
    scripted = torch.jit.load(str(path), map_location=model_device(model)).eval()
    worst = 0.0
    for bs in batch_sizes:
        x = example_images(model, bs)
        with torch.no_grad():
            got = scripted(x.to(model_device(model)))
        got = [g.cpu() for g in got] if isinstance(got, tuple) else [got.cpu()]
        ref = _torch_outputs(model, x, len(got) == 2)
        for g, r in zip(got, ref):
            if g.shape != r.shape:
                raise ExportError(f"TorchScript output shape {tuple(g.shape)} != PyTorch {tuple(r.shape)}")
            worst = max(worst, float((g - r).abs().max()))
    return worst


def onnx_metadata(model: nn.Module) -> dict[str, Any]:
    """What a deployment needs to feed and read the ONNX file: preprocessing, classes, model name.

    Keys: model, class_names, input_size (C, H, W), mean, std, interpolation, crop_pct,
    crop_mode, input ("images", float32 NCHW, normalised), outputs. The eval transform it
    describes: resize the shorter side to floor(H / crop_pct) with ``interpolation``, centre
    crop H x W, scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.
    """
    from .checkpoint import model_config
    from .preprocess import resolve_data_config

    cfg = resolve_data_config(model)
    names = getattr(model, "class_names", None)
    return {"model": model_config(model)["name"], "class_names": list(names) if names else None,
            "input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg.get("interpolation"), "crop_pct": cfg.get("crop_pct"),
            "crop_mode": cfg.get("crop_mode", "center"), "input": "images", "outputs": ["logits"]}


def onnx_sidecar(path: str | os.PathLike) -> Path:
    """The JSON file written next to an ONNX export: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_onnx_metadata(path: str | os.PathLike, model: nn.Module) -> tuple[Path, Path]:
    """Store :func:`onnx_metadata` in the ONNX file's ``metadata_props`` (one JSON string per key)
    and as a JSON sidecar (:func:`onnx_sidecar`); both written atomically. (onnx path, sidecar path)."""
    import json

    onnx = require("onnx", "export", "ONNX export")
    meta = onnx_metadata(model)
    graph = onnx.load(str(path))
    meta["outputs"] = [o.name for o in graph.graph.output]
    known = {p.key for p in graph.metadata_props}
    for key, value in meta.items():
        text = json.dumps(value)
        if key in known:
            next(p for p in graph.metadata_props if p.key == key).value = text
        else:
            graph.metadata_props.add(key=key, value=text)
    atomic_write(path, lambda tmp: onnx.save(graph, tmp))
    sidecar = onnx_sidecar(path)
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return Path(path), sidecar


HF_WEIGHTS = "model.safetensors"


def _hf_architecture(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The registered name timm rebuilds the model from, and the keyword arguments it was built with."""
    import timm

    from .checkpoint import model_config

    cfg = model_config(model)
    name = cfg["name"]
    if not timm.is_model(name):
        raise ExportError(f"the hf format needs a model registered with timm; {name!r} is not (a <head><K>@<model> "
                          "pattern model is rebuilt by gaheads.load: use --format safetensors)")
    return name, dict(cfg.get("kwargs") or {})


def export_hf(model: nn.Module, directory: str | os.PathLike, class_names: Sequence[str] | None = None) -> list[Path]:
    """Write the Hugging Face / timm folder format: ``config.json`` + ``model.safetensors``.

    ``config.json`` holds ``architecture`` (the registered name), ``num_classes``, ``num_features``,
    ``pretrained_cfg`` (preprocessing, ``first_conv``, ``classifier``), ``model_args`` (how the model
    was built) and ``label_names``; it is timm's own writer, so ``timm.models.push_to_hf_hub`` publishes
    the same files and, after ``import gaheads``, ``timm.create_model("local-dir:DIR", pretrained=True)``
    rebuilds the model with these weights.
    """
    require("huggingface_hub", "export", "the hf export format")
    from timm.models._hub import save_for_hf

    name, model_args = _hf_architecture(model)
    directory = Path(directory)
    model_config = {"label_names": list(class_names)} if class_names else {}
    was_cfg = getattr(model, "pretrained_cfg", None)
    # the saved cfg names where the weights came from only if they came from somewhere public
    model.pretrained_cfg = {k: v for k, v in dict(was_cfg or {}).items() if k not in ("file", "source")}
    try:
        save_for_hf(model, str(directory), model_config=model_config, model_args=model_args,
                    safe_serialization=True)
    except Exception as e:
        raise ExportError(f"hf export failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    finally:
        model.pretrained_cfg = was_cfg
    return [directory / "config.json", directory / HF_WEIGHTS]


def timm_supports_local_dir() -> bool:
    """Whether the installed timm reads ``local-dir:`` folders safely.

    timm 1.0.9 has no ``local-dir:``; timm 1.0.16 has it, but opens every weight file, a
    ``.safetensors`` one included, with an unrestricted ``torch.load``, which fails on
    safetensors and would run a pickle's code. timm 1.0.31's reader is safe (``weights_only=True``).
    """
    import inspect

    import timm.models._hub as hub

    reader = getattr(hub, "load_state_dict_from_path", None)
    if reader is None or not hasattr(hub, "load_model_config_from_path"):
        return False
    param = inspect.signature(reader).parameters.get("weights_only")
    return param is not None and param.default is True


def load_hf(directory: str | os.PathLike) -> nn.Module:
    """The model of an hf folder, built by timm: ``local-dir:DIR`` where timm has it, else the
    registered name from ``config.json`` with ``pretrained_cfg_overlay=dict(file=model.safetensors)``."""
    import json

    import timm

    directory = Path(directory)
    if timm_supports_local_dir():
        return timm.create_model(f"local-dir:{directory}", pretrained=True)
    cfg = json.loads((directory / "config.json").read_text())
    return timm.create_model(cfg["architecture"], pretrained=True, num_classes=cfg.get("num_classes"),
                             pretrained_cfg_overlay=dict(file=str(directory / HF_WEIGHTS)),
                             **{k: v for k, v in cfg.get("model_args", {}).items() if k != "num_classes"})


def check_hf(directory: str | os.PathLike, model: nn.Module,
             batch_sizes: Sequence[int] = CHECK_BATCH_SIZES) -> float:
    """Max |timm-loaded - PyTorch| ensemble and branch logits over the given batch sizes."""
    loaded = load_hf(directory).eval()
    model = model.eval()
    worst = 0.0
    with torch.no_grad():
        for bs in batch_sizes:
            x = example_images(model, bs).to(model_device(model))
            got = loaded(x.to(model_device(loaded)), return_branches=True).to(x.device)
            worst = max(worst, float((got - model(x, return_branches=True)).abs().max()))
    return worst
