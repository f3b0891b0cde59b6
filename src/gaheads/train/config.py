"""``gaheads train`` flags: the GA research script's timm-style flags and defaults, plus YAML configs.

``parse_args(argv)`` reads, in order of precedence: the command line, a YAML file given with
``-c/--config`` (keys are flag dest names, ``batch_size`` or ``batch-size``), then the defaults
below — which are the GA research train script's (SPEC 3) for what its commands leave out.
A flag repeated on the command line (the seed commands give ``--sched cosine`` twice) keeps
its last value, as argparse does. Bad input raises ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("imagefolder", "cifar100", "mnist5k")
SCHEDULERS = ("cosine", "tanh", "poly", "step")
PROG = "gaheads train"


class ConfigError(ValueError):
    """Bad flags or a bad config file; the message is one line naming the problem."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a multi-head (GA / SeqAttention) or any timm image classifier.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA",
                   help="data root (ImageFolder with train/ and val/, or the folder holding cifar-100-python/); "
                        "not needed for --dataset mnist5k")
    p.add_argument("-c", "--config", default=None, metavar="FILE.yaml",
                   help="YAML file of flag values (keys are flag names); command-line flags override it")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="imagefolder", choices=DATASETS, help="dataset kind")
    g.add_argument("--train-split", default="train", help="split name for training")
    g.add_argument("--val-split", default="val", help="split name for evaluation")
    g.add_argument("-j", "--workers", type=int, default=4, help="data loader worker processes per rank")
    g.add_argument("--strict-data", action="store_true", help="stop on an unreadable image instead of skipping it")
    g.add_argument("--pin-mem", action="store_true", help="pin host memory in the loaders (default: on with CUDA)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="seqattn8_cct_7_3x1_32", help="model name (gaheads info lists them)")
    g.add_argument("--num-classes", type=int, default=None, help="classes (default: the dataset's)")
    g.add_argument("--img-size", type=int, default=None, help="input image size (default: the model's)")
    g.add_argument("--drop-path", type=float, default=None, help="drop path rate (default: the model's)")
    g.add_argument("--GA_lam", "--GA-lam", dest="GA_lam", type=float, default=-0.8,
                   help="lambda of the branch decorrelation loss (negative pushes branches apart)")

    g = p.add_argument_group("preprocessing (default: from the model's pretrained cfg)")
    g.add_argument("--mean", type=float, nargs=3, default=None, metavar="M", help="normalisation mean")
    g.add_argument("--std", type=float, nargs=3, default=None, metavar="S", help="normalisation std")
    g.add_argument("--crop-pct", type=float, default=None, help="evaluation centre-crop fraction")
    g.add_argument("--interpolation", default=None, help="evaluation resize interpolation")

    g = p.add_argument_group("augmentation")
    g.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("MIN", "MAX"),
                   help="RandomResizedCrop aspect ratio range")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="AutoAugment/RandAugment policy ('none' for off)")
    g.add_argument("--color-jitter", type=float, default=0.4, help="colour jitter (used when --aa is off)")
    g.add_argument("--train-interpolation", default="random", help="training resize interpolation")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel", help="random erasing mode")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--aug-repeats", type=float, default=3, help="repeated-augmentation copies (0 for off)")
    g.add_argument("--mixup", type=float, default=0.2, help="mixup alpha (0 for off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0 for off)")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None, help="cutmix box ratio range")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    g.add_argument("--switch-prob", type=float, default=0.5, help="probability of cutmix instead of mixup")
    g.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"), help="how mixup is applied")
    g.add_argument("--mixup-off-epoch", type=int, default=0, help="turn mixup off from this epoch (0: never)")

    g = p.add_argument_group("loss")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--bce-loss", action="store_true", help="binary cross-entropy task loss (timm)")
    g.add_argument("--bce-target-thresh", type=float, default=None, help="binarise BCE targets at this threshold")

    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="lamb", help="timm optimizer name")
    g.add_argument("--opt-eps", type=float, default=None, help="optimizer epsilon (default: the optimizer's)")
    g.add_argument("--opt-betas", type=float, nargs="+", default=None, help="optimizer betas")
    g.add_argument("--momentum", type=float, default=0.9, help="momentum (SGD-like optimizers)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="weight decay")
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping value (off by default)")
    g.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="gradient clipping mode")
    g.add_argument("-b", "--batch-size", type=int, default=128, help="batch size per rank")
    g.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")

    g = p.add_argument_group("schedule")
    g.add_argument("--sched", default="cosine", choices=SCHEDULERS, help="lr schedule (stepped per optimizer update)")
    g.add_argument("--epochs", type=int, default=300, help="epochs")
    g.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    g.add_argument("--warmup-lr", type=float, default=1e-6, help="learning rate at the start of warmup")
    g.add_argument("--warmup-epochs", type=int, default=3, help="linear warmup epochs")
    g.add_argument("--min-lr", type=float, default=1e-6, help="final learning rate of the schedule")
    g.add_argument("--decay-epochs", type=float, default=90, help="step schedule: epochs between decays")
    g.add_argument("--decay-rate", type=float, default=0.1, help="step schedule: decay factor")

    g = p.add_argument_group("EMA")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (stepped per update)")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay")
    g.add_argument("--model-ema-warmup", action="store_true", help="ramp the EMA decay up over the first updates")

    g = p.add_argument_group("runtime")
    g.add_argument("--amp", action="store_true", help="mixed precision: bf16 where supported, else fp16 + scaler")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact reruns)")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                   default=int(os.environ.get("LOCAL_RANK", 0)),
                   help="set by torch.distributed.launch; the LOCAL_RANK environment variable wins")

    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--output", default=None,
                   help="output folder (default: runs/<dataset>-<model>-<time>; with --resume, the checkpoint's)")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="resume from a training checkpoint (a run folder means its last.pth)")
    g.add_argument("--save-every", type=int, default=0,
                   help="also keep epoch-<N>.pth every this many epochs (0: only last/best)")
    g.add_argument("--checkpoint-steps", type=int, default=0,
                   help="also write a resumable last.pth every this many optimizer steps (0: at epoch ends only)")
    g.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip up to N optimizer steps whose loss is not finite before stopping")
    g.add_argument("--log-interval", type=int, default=50, help="optimizer steps between loss logs (steps.csv)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _dest_index(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}


def load_yaml_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config into {dest: value}; unknown keys and bad choices are one-line errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config file {file} not found")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {file} is not valid YAML ({' '.join(str(e).split())})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must be a mapping of flag names to values")
    actions = _dest_index(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise ConfigError(f"config file {file}: unknown key {key!r}")
        action = actions[dest]
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"config file {file}: {key} must be one of {', '.join(map(str, action.choices))}, "
                              f"got {value!r}")
        if action.nargs in ("+", 2, 3) and value is not None and not isinstance(value, list | tuple):
            raise ConfigError(f"config file {file}: {key} must be a list")
        out[dest] = _convert(value, action, f"config file {file}: {key}")
    return out


def _convert(value: Any, action: argparse.Action, where: str) -> Any:
    """Apply the flag's type to YAML strings (PyYAML reads ``1e-3`` as a string) and list items."""
    if action.type is None or value is None:
        return value
    try:
        if isinstance(value, list | tuple):
            return [action.type(v) for v in value]
        if action.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return action.type(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid value {value!r}") from e


def validate(args: argparse.Namespace) -> None:
    """Value checks argparse cannot express; ConfigError names the flag."""
    positive = {"epochs": "--epochs", "batch_size": "-b/--batch-size", "grad_accumulation": "--grad-accumulation",
                "log_interval": "--log-interval"}
    for dest, flag in positive.items():
        if getattr(args, dest) < 1:
            raise ConfigError(f"{flag} must be >= 1, got {getattr(args, dest)}")
    for dest, flag in {"workers": "-j/--workers", "skip_nonfinite": "--skip-nonfinite", "save_every": "--save-every",
                       "checkpoint_steps": "--checkpoint-steps", "warmup_epochs": "--warmup-epochs"}.items():
        if getattr(args, dest) < 0:
            raise ConfigError(f"{flag} must be >= 0, got {getattr(args, dest)}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.dataset != "mnist5k" and not args.data_dir:
        raise ConfigError(f"--dataset {args.dataset} needs a data root (the positional DATA argument)")
    mixing = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixing and args.mixup_prob > 0 and args.batch_size % 2:
        raise ConfigError(f"mixup/cutmix needs an even batch size, got -b {args.batch_size} "
                          "(or turn them off with --mixup 0 --cutmix 0)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``gaheads train`` flags (see the module docstring); raises ConfigError on bad input."""
    parser = build_parser()
    pre = _Parser(add_help=False)
    pre.add_argument("-c", "--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config, parser))
    args = parser.parse_args(argv)
    if args.aa is not None and str(args.aa).lower() in ("", "none"):
        args.aa = None
    validate(args)
    return args
