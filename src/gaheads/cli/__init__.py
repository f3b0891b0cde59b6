"""The ``gaheads`` command: ``gaheads SUBCOMMAND [args]``.

Each subcommand is a module with ``main(argv) -> int``, imported only when used, so
``gaheads info`` does not pay for the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("gaheads.cli.info", "parameters, GMACs, branches and input size of models"),
    "train": ("gaheads.train.cli", "train a model (timm-style flags; also python -m gaheads.train, train.py)"),
    "multi-train": ("gaheads.train.multi", "train models under the SeqAttention seed's setups (multi_train.py)"),
    "validate": ("gaheads.cli.validate", "top-1/top-5 of the ensemble and each branch; --diversity"),
    "predict": ("gaheads.cli.predict", "top-k classes of images or folders from a checkpoint"),
    "export": ("gaheads.cli.export", "export a checkpoint to onnx, torchscript or safetensors"),
    "explain": ("gaheads.cli.explain", "per-branch class-attention maps of one image, as a PNG"),
}


def add_checkpoint_args(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """The options of every command that reads a trained model: --checkpoint, --no-ema, --device."""
    parser.add_argument("--checkpoint", required=True, help="last.pth / best.pth, or .safetensors (+ .json)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when the checkpoint has EMA")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gaheads SUBCOMMAND [options]   (gaheads SUBCOMMAND -h for its options)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from .. import __version__
        print(f"gaheads {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gaheads: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        if not e.name or not e.name.startswith("gaheads"):
            raise
        print(f"gaheads: subcommand {name!r} is not available in this build", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
