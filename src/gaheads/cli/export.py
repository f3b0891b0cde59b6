"""``gaheads export --checkpoint PATH --format onnx|torchscript|safetensors|hf --output FILE [--branches]``.

ONNX (dynamic batch axis) and TorchScript are run on the same random inputs as the PyTorch
model at batch sizes 1 and 3 and the largest absolute difference is printed; a difference
above ``--atol`` fails the export (exit 1). safetensors writes the weights plus a JSON config
from which ``gaheads.load`` rebuilds the model; it is reloaded and compared the same way. hf
writes the Hugging Face / timm folder (``--output`` is a directory: config.json + model.safetensors)
that ``timm.create_model("local-dir:DIR", pretrained=True)`` loads after ``import gaheads``; it is
loaded through timm and compared the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import add_checkpoint_args, failed

if TYPE_CHECKING:  # torch loads when the command runs, so --help answers at once
    import torch

FORMATS = ("onnx", "torchscript", "safetensors", "hf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads export", description="Export a checkpoint and check it against PyTorch.")
    add_checkpoint_args(p, device=False)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, help="file to write (.onnx, .pt, .safetensors), or for hf a directory")
    p.add_argument("--branches", action="store_true",
                   help="onnx/torchscript: also output per-branch logits (B, K, n) as 'branch_logits'")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - PyTorch| (default 1e-4)")
    return p


def check_safetensors(path: Path, model: torch.nn.Module) -> float:
    """Max |reloaded - original| ensemble and branch logits at batch sizes 1 and 3."""
    import torch

    from ..checkpoint import load
    from ..export import example_images

    reloaded = load(path)
    worst = 0.0
    with torch.no_grad():
        for bs in (1, 3):
            x = example_images(model, bs)
            worst = max(worst, float((reloaded(x, return_branches=True) - model(x, return_branches=True)).abs().max()))
    return worst


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError, load, save_weights
    from ..export import (
        ExportError,
        check_hf,
        check_onnx,
        check_torchscript,
        export_hf,
        export_onnx,
        export_torchscript,
        onnx_sidecar,
        timm_supports_local_dir,
    )

    out = Path(args.output)
    try:
        model = load(args.checkpoint, use_ema=not args.no_ema)
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.format == "hf":
            if not timm_supports_local_dir():
                import timm

                raise ExportError(f"--format hf needs a timm that reads local-dir: folders safely (1.0.31 does; "
                                  f"this is timm {timm.__version__})")
            written = export_hf(model, out, class_names=model.class_names)
            diff = check_hf(out, model)
        elif args.format == "onnx":
            written = [export_onnx(model, out, branches=args.branches), onnx_sidecar(out)]
            diff = check_onnx(out, model)
        elif args.format == "torchscript":
            written = [export_torchscript(model, out, branches=args.branches)]
            diff = check_torchscript(out, model)
        else:
            written = list(save_weights(model, out, class_names=model.class_names))
            diff = check_safetensors(written[0], model)
    except (CheckpointError, ExportError, OSError, ValueError) as e:  # OSError: StorageError too (exit 4)
        return failed("gaheads export", e)
    for path in written:
        print(f"wrote {path}")
    print(f"max abs diff vs PyTorch (batch 1 and 3): {diff:.3g}")
    if diff > args.atol:
        print(f"gaheads export: exported model differs from PyTorch by {diff:.3g} > --atol {args.atol:g}",
              file=sys.stderr)
        return 1
    return 0
