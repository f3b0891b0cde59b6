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
    from .inference import model_data_config

    return tuple(model_data_config(model)["input_size"])


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
    LayerNorm/einsum reshapes, so the torch.export-based one is used.
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
        return atomic_write(path, write)
    except Exception as e:
        raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e


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
