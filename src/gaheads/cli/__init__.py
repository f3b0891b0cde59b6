"""The ``gaheads`` command: ``gaheads SUBCOMMAND [args]``.

Each subcommand is a module with ``main(argv) -> int``, imported only when used, so
``gaheads info`` does not pay for the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("gaheads.cli.models", "list every registered model: branches, params, GMACs, input size (fast)"),
    "info": ("gaheads.cli.info", "parameters, GMACs, branches and input size of models, built and counted"),
    "recipes": ("gaheads.cli.recipes", "list the shipped training recipes (gaheads train DATA -c NAME)"),
    "train": ("gaheads.train.cli", "train a model (timm-style flags; also python -m gaheads.train, train.py)"),
    "multi-train": ("gaheads.train.multi", "train models under setups or on data folders, one table (multi_train.py)"),
    "validate": ("gaheads.cli.validate", "top-1/top-5 of the ensemble and each branch; --diversity"),
    "predict": ("gaheads.cli.predict", "top-k classes of images or folders from a checkpoint"),
    "export": ("gaheads.cli.export", "export a checkpoint to onnx, torchscript or safetensors"),
    "explain": ("gaheads.cli.explain", "per-branch class-attention maps of one image, as a PNG"),
    "upgrade-checkpoint": ("gaheads.cli.upgrade", "re-save a trusted old checkpoint in the safe format"),
    "convert": ("gaheads.cli.convert", "a research-release checkpoint -> gaheads .safetensors + .json"),
    "sweep": ("gaheads.train.sweep", "heads x GA_lam (x backbones) ablation: run folders, table and figure"),
}


def add_checkpoint_args(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """The options of every command that reads a trained model: --checkpoint, --no-ema, --device."""
    parser.add_argument("--checkpoint", required=True,
                        help="last.pth / best.pth, .safetensors (+ .json), or a run folder (its last.pth, else its "
                             "model.safetensors)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when the checkpoint has EMA")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for this command (see gaheads.threads for the default)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else half the usable cores, "
                             "at least 1)")


def add_pixel_limit_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels N``: images of more pixels are skipped (0: no limit)."""
    from ..train.config import whole_number  # argparse only: --help stays fast

    parser.add_argument("--max-image-pixels", type=whole_number(0), default=None, metavar="N",
                        help="skip images of more pixels than N; 0: no limit (default: PIL's limit, 89,478,485)")


def set_up_command(args: argparse.Namespace) -> None:
    """The process-wide settings a command, never the library, may choose: threads and PIL's pixel limit."""
    from ..threads import apply_threads

    apply_threads(args.threads)
    if getattr(args, "max_image_pixels", None) is not None:
        from ..preprocess import set_pil_pixel_limit

        set_pil_pixel_limit(args.max_image_pixels)


def failed(prog: str, error: Exception) -> int:
    """Print a command's error as one line; its exit status: the error's own (4: storage) or 2."""
    print(f"{prog}: {error}", file=sys.stderr)
    return int(getattr(error, "exit_code", 2))


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
    try:
        status = int(module.main(rest) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's own flush at exit
        return status
    except BrokenPipeError:
        # the reader went away (``gaheads validate --json | head``): stop quietly, as cat does; point
        # stdout at /dev/null so the interpreter's final flush does not raise again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (captured, replaced): nothing to silence
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
