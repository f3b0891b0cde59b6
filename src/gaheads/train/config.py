"""``gaheads train`` flags: the GA research script's timm-style flags and defaults, plus YAML configs.

``parse_args(argv)`` reads, in order of precedence: the command line, a YAML file given with
``-c/--config`` (keys are flag dest names, ``batch_size`` or ``batch-size``), then the defaults
below — which are the GA research train script's for what its commands leave out.
A flag repeated on the command line (the seed commands give ``--sched cosine`` twice) keeps
its last value, as argparse does. Bad input raises ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..data.kinds import DATASET_KINDS as DATASETS  # torch-free: --help lists them without loading torch

SCHEDULERS = ("cosine", "tanh", "poly", "step")
PROG = "gaheads train"  # the command's name in its messages; cli, engine and the loop's parts import it


class ConfigError(ValueError):
    """Bad flags or a bad config file; the message is one line naming the problem."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def finite_float(minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False) -> Callable[[Any], float]:
    """An argparse ``type=``: a finite float within the bounds (``positive``: > 0), else a one-line flag error.

    ``float()`` takes ``nan`` and ``inf``; a learning rate of nan would pass any ``<= 0`` check and
    only surface later as a non-finite loss, so such values are refused where the flag is read.
    """
    bound = (" > 0" if positive else "") + (
        f" in [{minimum:g}, {maximum:g}]" if minimum is not None and maximum is not None
        else f" >= {minimum:g}" if minimum is not None else f" <= {maximum:g}" if maximum is not None else "")

    def parse(text: Any) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}") from None
        if not (math.isfinite(value) and (minimum is None or value >= minimum)
                and (maximum is None or value <= maximum) and (not positive or value > 0)):
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}")
        return value

    parse.__name__ = "finite float"
    return parse


def whole_number(minimum: int = 0) -> Callable[[Any], int]:
    """An argparse ``type=``: an integer >= ``minimum`` (``1.5`` and ``1e9`` are refused, ``10**9`` is typed out)."""

    def parse(text: Any) -> int:
        try:
            if isinstance(text, float) and not text.is_integer():
                raise ValueError(text)
            value = int(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = "whole number"
    return parse


ANY = finite_float()
POSITIVE = finite_float(positive=True)
NONNEGATIVE = finite_float(minimum=0)
FRACTION = finite_float(minimum=0, maximum=1)


EXIT_STATUSES = ("exit status: 0 trained to the end; 2 bad input (one line on stderr); 3 stopped on a non-finite "
                 "loss; 4 an output file could not be written (disk full, file-size limit, I/O error, read-only "
                 "filesystem; the line names the file and the free space, the previous checkpoint is intact); "
                 "128 + signal (143 SIGTERM, 130 SIGINT) stopped by a signal after writing a resumable checkpoint")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it says something: not for None / False defaults, nor
    when the help text already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a multi-head (GA / SeqAttention) or any timm image classifier.",
                formatter_class=DefaultsHelpFormatter, epilog=EXIT_STATUSES)
    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA",
                   help="data root (ImageFolder with train/ and val/, or the folder holding cifar-100-python/); "
                        "not needed for --dataset mnist5k")
    p.add_argument("-c", "--config", default=None, metavar="RECIPE|FILE.yaml",
                   help="a shipped recipe by name (gaheads recipes lists them: small, finetune, cifar100, "
                        "imagenet-ga, demo) or a YAML file of flag values (keys are flag names); command-line "
                        "flags override it")
    for add_group in (_add_data_flags, _add_model_flags, _add_preprocessing_flags, _add_augmentation_flags,
                      _add_loss_flags, _add_optimizer_flags, _add_schedule_flags, _add_ema_flags, _add_runtime_flags,
                      _add_output_flags):
        add_group(p)
    return p


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="imagefolder", choices=DATASETS, help="dataset kind")
    g.add_argument("--train-split", default="train", help="split name for training")
    g.add_argument("--val-split", default="val", help="split name for evaluation")
    g.add_argument("-j", "--workers", type=int, default=4, help="data loader worker processes per rank")
    g.add_argument("--strict-data", action="store_true", help="stop on an unreadable image instead of skipping it")
    g.add_argument("--max-image-pixels", type=whole_number(0), default=None, metavar="N",
                   help="skip (or with --strict-data refuse) images of more pixels than N; 0: no limit "
                        "(default: PIL's decompression-bomb limit, 89,478,485)")
    g.add_argument("--pin-mem", action="store_true", help="pin host memory in the loaders (default: on with CUDA)")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="seqattn8_cct_7_3x1_32",
                   help="model name (gaheads models lists them), or <head><K>@<timm model>, e.g. ga5@resnet18")
    g.add_argument("--backbone-checkpoint", default=None, metavar="FILE",
                   help="local timm checkpoint for a <head><K>@<timm model> backbone (the heads start new)")
    g.add_argument("--num-classes", type=int, default=None, help="classes (default: the dataset's)")
    g.add_argument("--img-size", type=int, default=None, help="input image size (default: the model's)")
    g.add_argument("--drop-path", type=FRACTION, default=None, help="drop path rate (default: the model's)")
    g.add_argument("--GA_lam", "--GA-lam", dest="GA_lam", type=ANY, default=-0.8,
                   help="lambda of the branch decorrelation loss (negative pushes branches apart)")


def _add_preprocessing_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing (default: from the model's pretrained cfg)")
    g.add_argument("--mean", type=ANY, nargs=3, default=None, metavar="M", help="normalisation mean")
    g.add_argument("--std", type=POSITIVE, nargs=3, default=None, metavar="S", help="normalisation std")
    g.add_argument("--crop-pct", type=POSITIVE, default=None, help="evaluation centre-crop fraction")
    g.add_argument("--interpolation", default=None, help="evaluation resize interpolation")


def _add_augmentation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("augmentation")
    g.add_argument("--scale", type=POSITIVE, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range")
    g.add_argument("--ratio", type=POSITIVE, nargs=2, default=[3 / 4, 4 / 3], metavar=("MIN", "MAX"),
                   help="RandomResizedCrop aspect ratio range")
    g.add_argument("--hflip", type=FRACTION, default=0.5, help="horizontal flip probability")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="AutoAugment/RandAugment policy ('none' for off)")
    g.add_argument("--color-jitter", type=NONNEGATIVE, default=0.4, help="colour jitter (used when --aa is off)")
    g.add_argument("--train-interpolation", default="random", help="training resize interpolation")
    g.add_argument("--reprob", type=FRACTION, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel", help="random erasing mode")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--aug-repeats", type=NONNEGATIVE, default=3, help="repeated-augmentation copies (0 for off)")
    g.add_argument("--mixup", type=NONNEGATIVE, default=0.2, help="mixup alpha (0 for off)")
    g.add_argument("--cutmix", type=NONNEGATIVE, default=1.0, help="cutmix alpha (0 for off)")
    g.add_argument("--cutmix-minmax", type=FRACTION, nargs=2, default=None, help="cutmix box ratio range")
    g.add_argument("--mixup-prob", type=FRACTION, default=1.0, help="probability of mixup or cutmix per batch")
    g.add_argument("--switch-prob", type=FRACTION, default=0.5, help="probability of cutmix instead of mixup")
    g.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"), help="how mixup is applied")
    g.add_argument("--mixup-off-epoch", type=int, default=0, help="turn mixup off from this epoch (0: never)")


def _add_loss_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument("--smoothing", type=FRACTION, default=0.1, help="label smoothing")
    g.add_argument("--bce-loss", action="store_true", help="binary cross-entropy task loss (timm)")
    g.add_argument("--bce-target-thresh", type=ANY, default=None, help="binarise BCE targets at this threshold")


def _add_optimizer_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="lamb", help="timm optimizer name")
    g.add_argument("--opt-eps", type=POSITIVE, default=None, help="optimizer epsilon (default: the optimizer's)")
    g.add_argument("--opt-betas", type=FRACTION, nargs="+", default=None, help="optimizer betas")
    g.add_argument("--momentum", type=NONNEGATIVE, default=0.9, help="momentum (SGD-like optimizers)")
    g.add_argument("--weight-decay", type=NONNEGATIVE, default=0.05, help="weight decay")
    g.add_argument("--backbone-lr-scale", type=NONNEGATIVE, default=1.0,
                   help="the backbone's learning rate as a fraction of --lr (fine-tuning: e.g. 0.1); heads get --lr")
    g.add_argument("--layer-decay", type=FRACTION, default=None, metavar="RATE",
                   help="layer-wise lr decay (timm's, e.g. 0.75): layer groups from the model's group_matcher")
    g.add_argument("--clip-grad", type=POSITIVE, default=None, help="gradient clipping value (off by default)")
    g.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="gradient clipping mode")
    g.add_argument("-b", "--batch-size", type=int, default=128, help="batch size per rank")
    g.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument("--sched", default="cosine", choices=SCHEDULERS, help="lr schedule (stepped per optimizer update)")
    g.add_argument("--epochs", type=int, default=300, help="epochs")
    g.add_argument("--lr", type=POSITIVE, default=5e-3, help="peak learning rate")
    g.add_argument("--warmup-lr", type=NONNEGATIVE, default=1e-6, help="learning rate at the start of warmup")
    g.add_argument("--warmup-epochs", type=int, default=3, help="linear warmup epochs")
    g.add_argument("--min-lr", type=NONNEGATIVE, default=1e-6, help="final learning rate of the schedule")
    g.add_argument("--decay-epochs", type=POSITIVE, default=90, help="step schedule: epochs between decays")
    g.add_argument("--decay-rate", type=POSITIVE, default=0.1, help="step schedule: decay factor")


def _add_ema_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("EMA")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (stepped per update)")
    g.add_argument("--model-ema-decay", type=FRACTION, default=0.9998, help="EMA decay")
    g.add_argument("--model-ema-warmup", action="store_true", help="ramp the EMA decay up over the first updates")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--amp", action="store_true", help="mixed precision: bf16 where supported, else fp16 + scaler")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile mode (implies --compile); reduce-overhead replays CUDA graphs, which "
                        "pays off with static shapes (training drops the last partial batch)")
    g.add_argument("--amp-dtype", default=None, choices=("bfloat16", "float16"),
                   help="autocast dtype for --amp (default: bfloat16 where the GPU supports it, else float16 "
                        "with a gradient scaler)")
    g.add_argument("--prefetcher", action=argparse.BooleanOptionalAction, default=None,
                   help="workers return uint8 images; a side CUDA stream copies them to the device, where they are "
                        "normalised (and randomly erased) (default: on with CUDA, off on CPU)")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: OMP_NUM_THREADS if set, else half the usable cores, at "
                        "least 1: a spare core keeps the speed up when another process is busy)")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact reruns)")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                   default=int(os.environ.get("LOCAL_RANK", 0)),
                   help="set by torch.distributed.launch; the LOCAL_RANK environment variable wins")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--output", default=None,
                   help="output folder (default: runs/<dataset>-<model>-<time>; with --resume, the checkpoint's)")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="resume from a training checkpoint (a run folder means its last.pth); its recorded flags "
                        "apply, so --resume RUN_DIR alone continues the run; flags given with it override them")
    g.add_argument("--overwrite", action="store_true",
                   help="train into an --output folder that holds another run, deleting that run's files")
    g.add_argument("--save-every", type=int, default=0,
                   help="also keep epoch-<N>.pth every this many epochs (0: only last/best)")
    g.add_argument("--checkpoint-steps", type=int, default=0,
                   help="also write a resumable last.pth every this many optimizer steps (0: at epoch ends only)")
    g.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip up to N optimizer steps whose loss is not finite before stopping")
    g.add_argument("--log-interval", type=int, default=50, help="optimizer steps between loss logs (steps.csv)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _dest_index(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}


def load_yaml_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config into {dest: value}; unknown keys and bad choices are one-line errors."""
    from ..recipes import RecipeNotFound, resolve

    try:
        file = resolve(path)
    except RecipeNotFound as e:
        raise ConfigError(str(e)) from e
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
    except argparse.ArgumentTypeError as e:  # a typed flag's own reason (not finite, out of range)
        raise ConfigError(f"{where}: {e}") from e
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
    if args.backbone_lr_scale < 0:
        raise ConfigError(f"--backbone-lr-scale must be >= 0, got {args.backbone_lr_scale}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
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
    if args.resume:
        from_file = load_yaml_config(known.config, parser) if known.config else {}
        _apply_recorded_flags(args, parser, sys.argv[1:] if argv is None else list(argv), from_file)
    if args.aa is not None and str(args.aa).lower() in ("", "none"):
        args.aa = None
    validate(args)
    return args


# flags a resumed run never takes from its checkpoint: where it resumes from and how it is launched now
NOT_RESUMED = frozenset({"resume", "output", "overwrite", "local_rank"})
# recorded paths that may be relative to the folder the run was started in
_PATH_FLAGS = ("data_dir", "backbone_checkpoint")


def _given_on_command_line(argv: list[str]) -> set[str]:
    """The dests ``argv`` sets explicitly (a flag given with its default value counts as given)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _apply_recorded_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str],
                          from_file: dict[str, Any]) -> None:
    """Fill ``args`` from the resumed checkpoint's recorded flags where neither the command line nor
    ``-c`` gave a value: command line > config file > checkpoint > defaults."""
    from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    try:
        ck = load_checkpoint(resolve_checkpoint(args.resume, training=True))
    except CheckpointError as e:
        raise ConfigError(str(e)) from e
    recorded = ck.get("args")
    if not isinstance(recorded, dict):
        return  # a checkpoint without its flags: the command line and the defaults apply
    given = _given_on_command_line(argv) | set(from_file)
    actions = _dest_index(parser)
    where = f"--resume {args.resume}"
    for key, value in recorded.items():
        if key in NOT_RESUMED or key in given or key not in actions:
            continue
        action = actions[key]
        if action.choices is not None and value is not None and value not in action.choices:
            raise ConfigError(f"{where}: its recorded {key} {value!r} is not one of "
                              f"{', '.join(map(str, action.choices))}")
        setattr(args, key, _convert(value, action, f"{where}: its recorded {key}"))
    cwd = ck.get("cwd")
    for key in _PATH_FLAGS:
        value = getattr(args, key, None)
        if key in given or not value or Path(value).exists() or Path(value).is_absolute() or not isinstance(cwd, str):
            continue
        if (Path(cwd) / value).exists():  # started elsewhere: relative to that folder
            setattr(args, key, str(Path(cwd) / value))
    root = args.data_dir
    if "data_dir" not in given and root and args.dataset != "mnist5k" and not Path(root).exists():
        raise ConfigError(f"{where}: the run's data root {root} does not exist any more; give its new place: "
                          f"gaheads train NEW_ROOT --resume {args.resume}")


def _flag_name(action: argparse.Action) -> str:
    long = [o for o in action.option_strings if o.startswith("--")]
    return long[-1] if long else (action.metavar or action.dest) if not action.option_strings \
        else action.option_strings[-1]


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value)


def describe_changes(recorded: Any, args: argparse.Namespace) -> str:
    """The flags of ``args`` that differ from a checkpoint's ``recorded`` ones, as
    ``--lr 0.001 (was 0.0005), --epochs 4 (was 2)``; "" when none (or nothing was recorded)."""
    if not isinstance(recorded, dict):
        return ""
    names = {a.dest: _flag_name(a) for a in build_parser()._actions if a.dest != "help"}

    def same(a: Any, b: Any) -> bool:
        norm = (lambda v: list(v) if isinstance(v, tuple) else v)
        return norm(a) == norm(b)

    return ", ".join(f"{names[k]} {_shown(now)} (was {_shown(recorded[k])})" for k, now in vars(args).items()
                     if k in names and k in recorded and k not in NOT_RESUMED and not same(recorded[k], now))
