"""What a run is made of, built from its flags: data, model, optimizer / scheduler / loss, DDP and compile wrapping."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data import check_classes, create_dataset, create_loader, create_transform
from ..loss import MultiBranchLoss, create_task_loss
from ..models.base import MultiBranchModel
from ..models.factory import create_model
from ..models.ga_timm import model_pretrained_cfg
from ..preprocess import resolve_data_config
from .config import PROG, ConfigError
from .distributed import DistContext


def data_config(args: argparse.Namespace) -> dict[str, Any]:
    """Preprocessing from the model's pretrained cfg, with --img-size/--mean/--std/... overriding it."""
    # the name's own cfg (a <head><K>@<timm model> pattern: the backbone's), without building a model;
    # UnknownModelError with close-name suggestions for an unknown name
    pretrained = model_pretrained_cfg(args.model)
    overrides = {"img_size": args.img_size, "mean": args.mean, "std": args.std, "crop_pct": args.crop_pct,
                 "interpolation": args.interpolation}
    return resolve_data_config(pretrained, overrides)


def prefetching(args: argparse.Namespace, device: torch.device) -> bool:
    """Whether workers hand over uint8 images for gaheads.data.prefetch to normalise on the device."""
    wanted = getattr(args, "prefetcher", None)
    return device.type == "cuda" if wanted is None else bool(wanted)


@dataclass
class RunData:
    """The datasets and loaders, and how many batches / optimizer steps an epoch has on each rank."""

    train_set: Any
    val_set: Any
    class_names: list[str]
    train_loader: Any
    val_loader: Any
    batches_per_epoch: int
    accum: int
    updates_per_epoch: int


def build_data(args: argparse.Namespace, config: dict[str, Any], ctx: DistContext) -> RunData:
    """Train and held-out datasets with their transforms, and their seeded (per-rank) loaders."""
    a = args
    train_tf = create_transform(
        config, True, scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip, auto_augment=a.aa,
        color_jitter=a.color_jitter, re_prob=a.reprob, re_mode=a.remode, re_count=a.recount,
        train_interpolation=a.train_interpolation, use_prefetcher=prefetching(a, ctx.device))
    val_tf = create_transform(config, False)  # float from the workers: the prefetcher only moves it
    data = dict(strict=a.strict_data, max_pixels=a.max_image_pixels)
    train_set = create_dataset(a.dataset, a.data_dir, a.train_split, transform=train_tf, **data)
    val_set = create_dataset(a.dataset, a.data_dir, a.val_split, transform=val_tf, **data)
    check_classes(train_set, val_set)  # else a val label would name another class
    pin = a.pin_mem or ctx.device.type == "cuda"
    common = dict(num_workers=a.workers, distributed=ctx.distributed, seed=a.seed, pin_memory=pin)
    train_loader = create_loader(train_set, a.batch_size, True, num_repeats=a.aug_repeats, **common)
    val_loader = create_loader(val_set, a.batch_size, False, **common)
    batches = train_loader.sampler.epoch_batches(drop_last=True)
    if batches < 1:
        raise ConfigError(f"the training set gives each of the {ctx.world_size} rank(s) "
                          f"{len(train_loader.sampler)} images, fewer than one batch (-b {a.batch_size})")
    accum = a.grad_accumulation
    return RunData(train_set, val_set, list(train_set.classes), train_loader, val_loader, batches, accum,
                   -(-batches // accum))


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The model ``--model`` names, with --drop-path and --backbone-checkpoint; ConfigError for a bad pairing."""
    kwargs: dict[str, Any] = {}
    if args.drop_path is not None:
        kwargs["drop_path_rate"] = args.drop_path
    if getattr(args, "backbone_checkpoint", None):
        kwargs["backbone_checkpoint"] = args.backbone_checkpoint
    try:
        return create_model(args.model, num_classes=num_classes, img_size=args.img_size, **kwargs)
    except FileNotFoundError as e:
        raise ConfigError(f"--backbone-checkpoint: {e}") from e
    except TypeError as e:
        if "backbone_checkpoint" in str(e):
            raise ConfigError(f"--backbone-checkpoint needs a model with a timm backbone (<head><K>@<timm model>, "
                              f"ga_resnet50, ga_vit_small, ga_vit_medium), not {args.model}") from e
        # many timm CNNs take no img_size; their input size is only a data setting
        if args.img_size is None or "img_size" not in str(e):
            raise
        return create_model(args.model, num_classes=num_classes, **kwargs)


def is_multi_head(model: nn.Module) -> bool:
    return isinstance(model, MultiBranchModel)


def amp_settings(args: argparse.Namespace, device: torch.device,
                 log: Callable[[str], None]) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if not args.amp:
        return None, False
    if device.type != "cuda":
        log(f"{PROG}: --amp is ignored on {device.type} (mixed precision here needs a CUDA GPU); training in float32")
        return None, False
    wanted = getattr(args, "amp_dtype", None)
    if wanted == "bfloat16" or (wanted is None and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True


@dataclass
class Optimization:
    """Everything that turns losses into updates: optimizer, lr schedule, grad scaler, Mixup/CutMix, loss."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    mixup: Mixup | None
    loss_fn: MultiBranchLoss


def build_optimization(args: argparse.Namespace, model: nn.Module, num_classes: int, updates_per_epoch: int,
                       device: torch.device, log: Callable[[str], None]) -> Optimization:
    """timm's optimizer (``--layer-decay`` or ``--backbone-lr-scale`` groups), a per-update schedule, the loss."""
    a = args
    opt_kwargs: dict[str, Any] = dict(opt=a.opt, lr=a.lr, weight_decay=a.weight_decay, momentum=a.momentum)
    if a.opt_eps is not None:
        opt_kwargs["eps"] = a.opt_eps
    if a.opt_betas:
        opt_kwargs["betas"] = tuple(a.opt_betas)
    layer_decay = getattr(a, "layer_decay", None)
    if layer_decay is not None:
        if a.backbone_lr_scale != 1.0:
            raise ConfigError("--layer-decay and --backbone-lr-scale both set the backbone's learning rates; "
                              "use one of them")
        opt_kwargs["layer_decay"] = layer_decay  # timm groups the layers with the model's group_matcher
    params = model if a.backbone_lr_scale == 1.0 else param_groups(a, model)
    try:
        optimizer = create_optimizer_v2(params, **opt_kwargs)
    except (ValueError, KeyError, AssertionError) as e:
        raise ConfigError(f"--opt {a.opt}: {' '.join(str(e).split())}") from e
    amp_dtype, use_scaler = amp_settings(a, device, log)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=a.sched, num_epochs=a.epochs, decay_epochs=a.decay_epochs, decay_rate=a.decay_rate,
        min_lr=a.min_lr, warmup_lr=a.warmup_lr, warmup_epochs=a.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=updates_per_epoch)
    mixing = (a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax is not None) and a.mixup_prob > 0
    mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, cutmix_minmax=a.cutmix_minmax,
                  prob=a.mixup_prob, switch_prob=a.switch_prob, mode=a.mixup_mode,
                  label_smoothing=a.smoothing, num_classes=num_classes) if mixing else None
    task = create_task_loss(a.smoothing, mixup=mixing, bce=a.bce_loss, bce_target_thresh=a.bce_target_thresh)
    return Optimization(optimizer, scheduler, scaler, amp_dtype, mixup, MultiBranchLoss(task, lam=a.GA_lam).to(device))


def param_groups(args: argparse.Namespace, model: nn.Module) -> list[dict[str, Any]]:
    """Backbone and head parameters in separate groups, the backbone's with ``lr_scale``
    (timm's schedulers multiply the group's lr by it); no weight decay on biases, norms and
    the model's own exemptions, as timm does for a whole model."""
    backbone = getattr(model, "backbone", None)
    if not is_multi_head(model) or backbone is None:
        raise ConfigError(f"--backbone-lr-scale needs a multi-head model (a backbone and heads), not {args.model}")
    in_backbone = {id(p) for p in backbone.parameters()}
    skip = set(model.no_weight_decay())
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part, no_decay = id(p) in in_backbone, p.ndim <= 1 or name.endswith(".bias") or name in skip
        group = groups.setdefault((part, no_decay), {"params": [], "weight_decay": 0.0 if no_decay else
                                                     args.weight_decay, **({"lr_scale": args.backbone_lr_scale}
                                                                           if part else {})})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def wrap_model(model: nn.Module, args: argparse.Namespace, ctx: DistContext
               ) -> tuple[nn.Module | None, nn.Module, Callable[[nn.Module], nn.Module]]:
    """(the DDP wrapper or None, what the training forward calls, how to wrap a model for evaluation)."""
    wrapped: nn.Module = model
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    mode = getattr(args, "compile_mode", None)
    compiled = args.compile or mode is not None
    train_model = torch.compile(wrapped, mode=mode) if compiled else wrapped
    eval_wrap: Callable[[nn.Module], nn.Module] = (lambda m: torch.compile(m, mode=mode)) if compiled else (lambda m: m)
    return (wrapped if ctx.distributed else None), train_model, eval_wrap
