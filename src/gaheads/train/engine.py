"""The training loop: timm's optimizer, scheduler, EMA and Mixup around gaheads' multi-head loss.

``train(args)`` (args from ``config.parse_args``) trains, evaluates every epoch and returns the
run's summary (also written to ``summary.json``). Per optimizer step: ``--grad-accumulation``
micro-batches (DDP ``no_sync`` on all but the last), an optional gradient clip, one optimizer
update, one EMA update, one scheduler ``step_update`` — so warmup and cosine are per update.

Resume is exact: a checkpoint records the optimizer step, the position inside the epoch, the
partial epoch's loss sums and every rank's RNG states; batches are a pure function of
(seed, epoch, index) (gaheads.data), so a resumed run follows the same trajectory.

Raises ``config.ConfigError``, ``gaheads.data.DataError``, ``gaheads.checkpoint.CheckpointError``
or ``state.CheckpointWriteError`` for bad input (one line), ``faults.NonFiniteLossError`` and
``faults.TrainingInterrupted`` when training stops early (see ``faults``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import __version__
from ..checkpoint import (
    FORMAT,
    CheckpointError,
    StorageError,
    check_state_dict,
    load_checkpoint,
    model_config,
    resolve_checkpoint,
    save_weights,
)
from ..cpu_memory import keep_freed_memory
from ..data import check_classes, create_dataset, create_loader, create_transform
from ..data.prefetch import DevicePrefetcher
from ..flops import count_params
from ..loss import MultiHeadLoss, create_task_loss
from ..metrics import BranchAccuracy
from ..models.base import MultiHeadModel
from ..models.factory import create_model
from ..models.ga_timm import model_pretrained_cfg
from ..preprocess import resolve_data_config
from . import distributed as dist_utils
from .config import ConfigError, describe_changes
from .faults import (
    EVALUATING,
    FINISHING,
    STARTUP,
    TRAINING,
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    describe_indices,
    nan_test_steps,
    signal_name,
)
from .outputs import STEP_COLUMNS, append_text, epoch_columns, plot_curves, write_csv, write_json, write_text
from .runlock import LOCK_NAME, RunFolderBusy, RunLock, earlier_run_files, remove_earlier_run
from .state import (
    CheckpointWriteError,
    config_record,
    keep_copy,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

PROG = "gaheads train"


class TrainerCallback:
    """Hooks a caller (a test, a tool) passes to ``train``; every method is a no-op here.

    None is called inside an optimizer step: they cost nothing where training spends its time.
    """

    def on_startup(self, trainer: Trainer, stage: str) -> None:
        """Start-up reached ``stage``: "output" (folder locked), "data" (datasets built), "model"."""

    def on_val_batch(self, trainer: Trainer, index: int) -> None:
        """Evaluation is about to run its ``index``-th batch (0-based)."""


class _EvaluationStopped(Exception):
    """A signal arrived during evaluation; every rank agreed to leave it (``signum``: the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def train(args: argparse.Namespace, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train as ``args`` says; the summary dict (the same as ``summary.json``).

    ``callbacks`` get the ``TrainerCallback`` hooks (tests use them to make a phase slow).
    """
    # a process group someone else set up (multi-train runs several models in one group) is left to them
    own_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = dist_utils.setup(args.device, args.local_rank)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    cudnn_before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    stop = StopRequest(announce=ctx.is_main).install()
    stop.phase = STARTUP  # a signal now stops at once: nothing is resumable yet
    try:
        trainer = Trainer(args, ctx, stop, callbacks)
        try:
            return trainer.fit()
        finally:
            trainer.close()
    finally:
        stop.restore()
        torch.use_deterministic_algorithms(deterministic_before)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_before
        if own_group:
            dist_utils.teardown(ctx)


def forward_branches(model: nn.Module, x: torch.Tensor, multi_head: bool) -> torch.Tensor:
    """Per-branch logits (B, K, n); a plain timm classifier counts as one branch."""
    out = model(x, return_branches=True) if multi_head else model(x)
    return out if out.ndim == 3 else out.unsqueeze(1)


def _build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
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


class Trainer:
    """One training run: built from args, ``fit()`` runs it to the end (or raises to stop early)."""

    def __init__(self, args: argparse.Namespace, ctx: dist_utils.DistContext, stop: StopRequest,
                 callbacks: list[TrainerCallback] | None = None) -> None:
        self.args, self.ctx, self.stop = args, ctx, stop
        self.callbacks = list(callbacks or [])
        self.lock: RunLock | None = None
        self._created_out: Path | None = None  # the output folder, when this run created it
        self.device = ctx.device
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on re-allocated activations each step (cpu_memory's doc)
        self.main = ctx.is_main
        self.nan_steps = nan_test_steps()
        self._set_determinism()

        if args.resume:  # --resume RUN_DIR means its last.pth
            args.resume = str(resolve_checkpoint(args.resume, training=True))
        self.resume = load_checkpoint(args.resume) if args.resume else None
        if args.resume:
            stop.startup_note = f"; {args.resume} is unchanged"
        try:
            self.out = self._output_dir()
            self._set_up()
        except BaseException:  # a refusal, bad input or a signal during start-up: let go of the folder
            self.close()
            raise

    def _set_up(self) -> None:
        args, ctx = self.args, self.ctx
        self._startup("output")
        seed_everything(args.seed)  # same initial weights on every rank
        self.data_config = self._data_config()
        self._build_data()
        self._startup("data")
        self.num_classes = args.num_classes or len(self.class_names)
        if self.num_classes < len(self.class_names):
            raise ConfigError(f"--num-classes {self.num_classes} is fewer than the dataset's "
                              f"{len(self.class_names)} classes")
        self._build_model()
        self._build_optimization()
        self._wrap_model()
        self._startup("model")

        # per-run bookkeeping, replaced by the checkpoint's on resume
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken (skipped non-finite steps included)
        self.epoch_step = 0  # steps done inside the current, unfinished epoch
        self.history: list[dict[str, Any]] = []
        self.best_top1, self.best_epoch = -1.0, 0
        self.skipped_total = 0
        self.skipped_files: list[str] = []  # unreadable images met so far (all ranks)
        self.train_seconds = 0.0
        self.progress = self._new_progress()
        self.pending_rng: dict[str, Any] | None = None
        self.last_saved: tuple[Path, int, int] | None = None
        seed_everything(args.seed + ctx.rank)  # augmentation noise differs per rank
        if self.resume is not None:
            self._restore(self.resume)
        self.stop.phase = TRAINING  # from here a signal stops with a resumable checkpoint
        self._prepare_step_log()

    def _startup(self, stage: str) -> None:
        for cb in self.callbacks:
            cb.on_startup(self, stage)

    def close(self) -> None:
        """Release the output folder (its lock; the folder itself when this run created it and left it empty)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self._created_out is not None:
            with contextlib.suppress(OSError):  # not empty (or gone): kept as it is
                self._created_out.rmdir()
            self._created_out = None

    # ---------------------------------------------------------------- set-up
    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def _set_determinism(self) -> None:
        if self.args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _output_dir(self) -> Path:
        args = self.args
        if args.output:
            out = Path(args.output)
        elif args.resume:
            out = Path(args.resume).parent
        else:
            out = Path("runs") / f"{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        problem = claim = None
        if self.main:
            try:
                created = not out.exists()
                out.mkdir(parents=True, exist_ok=True)
                if created:
                    self._created_out = out
                with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
                    pass
            except OSError as e:
                problem = f"output folder {out} is not writable ({e.strerror or e})"
            if problem is None:
                claim = self._claim(out)
        out, problem, claim = dist_utils.broadcast_object((str(out), problem, claim))
        if problem:
            self.close()
            raise CheckpointWriteError(problem)
        if claim:
            self.close()
            raise ConfigError(claim)
        return Path(out)

    def _claim(self, out: Path) -> str | None:
        """Lock ``out`` for this run (rank 0 only) and check it holds no other run; the refusal, or None."""
        lock = RunLock(out)
        try:
            lock.acquire()
        except RunFolderBusy as e:
            return str(e)
        except OSError as e:
            return f"output folder {out}: cannot create its {LOCK_NAME} ({e.strerror or e})"
        self.lock = lock
        if lock.took_over:
            holder = lock.took_over
            self.log(f"{PROG}: {out} had a stale {LOCK_NAME} of PID {holder.get('pid', '?')} on host "
                     f"{holder.get('host', '?')}, a run that ended without removing it; taking it over")
        files = earlier_run_files(out)
        if not files:
            return None
        a = self.args
        if a.resume and Path(a.resume).resolve().parent == out.resolve():
            return None  # the resumed run's own folder
        if getattr(a, "overwrite", False):
            removed = remove_earlier_run(out)
            self.log(f"{PROG}: --overwrite: removed the earlier run's files from {out} ({', '.join(removed)})")
            return None
        shown = ", ".join(files[:4]) + (f", +{len(files) - 4} more" if len(files) > 4 else "")
        return (f"output folder {out} already holds another training run ({shown}); continue it with --resume {out}, "
                "replace it with --overwrite, or choose another --output")

    def _data_config(self) -> dict[str, Any]:
        """Preprocessing from the model's pretrained cfg, with --img-size/--mean/--std/... overriding it."""
        # the name's own cfg (a <head><K>@<timm model> pattern: the backbone's), without building a model;
        # UnknownModelError with close-name suggestions for an unknown name
        pretrained = model_pretrained_cfg(self.args.model)
        a = self.args
        overrides = {"img_size": a.img_size, "mean": a.mean, "std": a.std, "crop_pct": a.crop_pct,
                     "interpolation": a.interpolation}
        return resolve_data_config(pretrained, overrides)

    def _build_data(self) -> None:
        a = self.args
        train_tf = create_transform(
            self.data_config, True, scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip, auto_augment=a.aa,
            color_jitter=a.color_jitter, re_prob=a.reprob, re_mode=a.remode, re_count=a.recount,
            train_interpolation=a.train_interpolation, use_prefetcher=self._prefetching())
        val_tf = create_transform(self.data_config, False)  # float from the workers: the prefetcher only moves it
        data = dict(strict=a.strict_data, max_pixels=a.max_image_pixels)
        self.train_set = create_dataset(a.dataset, a.data_dir, a.train_split, transform=train_tf, **data)
        self.val_set = create_dataset(a.dataset, a.data_dir, a.val_split, transform=val_tf, **data)
        check_classes(self.train_set, self.val_set)  # else a val label would name another class
        self.class_names = list(self.train_set.classes)
        pin = a.pin_mem or self.device.type == "cuda"
        common = dict(num_workers=a.workers, distributed=self.ctx.distributed, seed=a.seed, pin_memory=pin)
        self.train_loader = create_loader(self.train_set, a.batch_size, True, num_repeats=a.aug_repeats, **common)
        self.val_loader = create_loader(self.val_set, a.batch_size, False, **common)
        self.batches_per_epoch = self.train_loader.sampler.epoch_batches(drop_last=True)
        if self.batches_per_epoch < 1:
            raise ConfigError(f"the training set gives each of the {self.ctx.world_size} rank(s) "
                              f"{len(self.train_loader.sampler)} images, fewer than one batch (-b {a.batch_size})")
        self.accum = a.grad_accumulation
        self.updates_per_epoch = -(-self.batches_per_epoch // self.accum)

    def _build_model(self) -> None:
        a = self.args
        model = _build_model(a, self.num_classes)
        self.multi_head = isinstance(model, MultiHeadModel)
        self.num_branches = model.num_branches if self.multi_head else 1
        self.num_params = count_params(model)["total"]
        model.to(self.device)
        if a.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: what is saved, EMA'd and evaluated
        self.ema = ModelEmaV3(model, decay=a.model_ema_decay, use_warmup=a.model_ema_warmup) if a.model_ema else None

    def _prefetching(self) -> bool:
        """Whether workers hand over uint8 images for gaheads.data.prefetch to normalise on the device."""
        wanted = getattr(self.args, "prefetcher", None)
        return self.device.type == "cuda" if wanted is None else bool(wanted)

    def _on_device(self, loader: Any, train: bool = False) -> Any:
        """``loader`` itself, or its batches normalised on the device (uint8 images from the workers)."""
        if not self._prefetching():
            return loader
        a = self.args
        return DevicePrefetcher(loader, self.device, self.data_config["mean"], self.data_config["std"],
                                channels_last=a.channels_last, re_prob=a.reprob if train else 0.0,
                                re_mode=a.remode, re_count=a.recount)

    def _amp(self) -> tuple[torch.dtype | None, bool]:
        """(autocast dtype or None, whether a GradScaler is needed)."""
        if not self.args.amp:
            return None, False
        if self.device.type != "cuda":
            self.log(f"{PROG}: --amp is ignored on {self.device.type} (mixed precision here needs a CUDA GPU); "
                     "training in float32")
            return None, False
        wanted = getattr(self.args, "amp_dtype", None)
        if wanted == "bfloat16" or (wanted is None and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, False
        return torch.float16, True

    def _build_optimization(self) -> None:
        a = self.args
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
        params = self.model if a.backbone_lr_scale == 1.0 else self._param_groups()
        try:
            self.optimizer = create_optimizer_v2(params, **opt_kwargs)
        except (ValueError, KeyError, AssertionError) as e:
            raise ConfigError(f"--opt {a.opt}: {' '.join(str(e).split())}") from e
        self.amp_dtype, use_scaler = self._amp()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=a.sched, num_epochs=a.epochs, decay_epochs=a.decay_epochs, decay_rate=a.decay_rate,
            min_lr=a.min_lr, warmup_lr=a.warmup_lr, warmup_epochs=a.warmup_epochs, step_on_epochs=False,
            updates_per_epoch=self.updates_per_epoch)
        mixing = (a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax is not None) and a.mixup_prob > 0
        self.mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, cutmix_minmax=a.cutmix_minmax,
                           prob=a.mixup_prob, switch_prob=a.switch_prob, mode=a.mixup_mode,
                           label_smoothing=a.smoothing, num_classes=self.num_classes) if mixing else None
        task = create_task_loss(a.smoothing, mixup=mixing, bce=a.bce_loss, bce_target_thresh=a.bce_target_thresh)
        self.loss_fn = MultiHeadLoss(task, lam=a.GA_lam).to(self.device)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Backbone and head parameters in separate groups, the backbone's with ``lr_scale``
        (timm's schedulers multiply the group's lr by it); no weight decay on biases, norms and
        the model's own exemptions, as timm does for a whole model."""
        a = self.args
        backbone = getattr(self.model, "backbone", None)
        if not self.multi_head or backbone is None:
            raise ConfigError(f"--backbone-lr-scale needs a multi-head model (a backbone and heads), not {a.model}")
        in_backbone = {id(p) for p in backbone.parameters()}
        skip = set(self.model.no_weight_decay())
        groups: dict[tuple[bool, bool], dict[str, Any]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            part, no_decay = id(p) in in_backbone, p.ndim <= 1 or name.endswith(".bias") or name in skip
            group = groups.setdefault((part, no_decay), {"params": [], "weight_decay": 0.0 if no_decay else
                                                         a.weight_decay, **({"lr_scale": a.backbone_lr_scale}
                                                                            if part else {})})
            group["params"].append(p)
        return [groups[k] for k in sorted(groups)]

    def _wrap_model(self) -> None:
        model: nn.Module = self.model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.ddp = model if self.ctx.distributed else None
        mode = getattr(self.args, "compile_mode", None)
        compiled = self.args.compile or mode is not None
        self.train_model = torch.compile(model, mode=mode) if compiled else model
        self.eval_model: Callable[[nn.Module], nn.Module] = (
            (lambda m: torch.compile(m, mode=mode)) if compiled else (lambda m: m))
        self._compiled_eval: dict[int, nn.Module] = {}

    def _restore(self, ck: dict[str, Any]) -> None:
        """Load everything a checkpoint holds; the RNG states are applied when training restarts."""
        where = f"--resume {self.args.resume}"
        try:
            check_state_dict(self.model, ck["model"], where)
        except CheckpointError as e:
            theirs = (ck.get("model_config") or {}).get("name")
            if theirs and theirs != model_config(self.model)["name"]:
                raise CheckpointError(f"{e}; the checkpoint holds a {theirs}: leave out --model to resume it") from e
            raise
        self.model.load_state_dict(ck["model"])
        if ck.get("optimizer") is None:
            raise ConfigError(f"{where}: checkpoint has no optimizer state (is it a training checkpoint?)")
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except ValueError as e:
            raise ConfigError(f"{where}: optimizer state does not fit --opt {self.args.opt} ({e})") from e
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None:
            if ck.get("ema") is not None:
                check_state_dict(self.ema.module, ck["ema"], f"{where} (EMA)")
                self.ema.module.load_state_dict(ck["ema"])
            else:
                self.log(f"{PROG}: the checkpoint has no EMA weights; the EMA starts from the resumed weights")
                self.ema.module.load_state_dict(ck["model"])
        self.epoch, self.step, self.epoch_step = int(ck["epoch"]), int(ck["step"]), int(ck.get("epoch_step", 0))
        self.history = list(ck.get("history", []))
        best = ck.get("best") or {}
        self.best_top1, self.best_epoch = float(best.get("top1", -1.0)), int(best.get("epoch", 0))
        self.skipped_total = int(ck.get("skipped_steps", 0))
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        loader = ck.get("loader") or {}
        mine = self._loader_info()
        if self.epoch_step and loader != mine:
            raise ConfigError(f"{where}: the checkpoint was written mid-epoch with {loader}; resume it with the same "
                              f"batch size, accumulation and number of processes (now {mine})")
        if self.epoch_step:  # this rank's partial-epoch sums (same world size, checked above)
            per_rank = ck.get("progress_ranks")
            self.progress = dict(per_rank[self.ctx.rank] if per_rank else ck["progress"])
        sched_state = ck.get("scheduler") or {}
        fresh = self.scheduler.state_dict()
        if all(sched_state.get(k) == fresh.get(k) for k in ("t_initial", "warmup_t", "lr_min", "warmup_lr_init")):
            self.scheduler.load_state_dict(sched_state)
        else:
            self.log(f"{PROG}: the lr schedule differs from the checkpoint's (epochs, batches or lr flags changed); "
                     f"following the new one from step {self.step}")
        self.scheduler.step_update(num_updates=self.step)
        rng = ck.get("rng") or {}
        ranks = rng.get("ranks")
        self.pending_rng = ranks[self.ctx.rank] if ranks and len(ranks) == self.ctx.world_size else (
            rng if self.ctx.world_size == 1 and "torch" in rng else None)
        into = f" ({self.epoch_step} of {self.updates_per_epoch} steps into the epoch)" if self.epoch_step else ""
        self.log(f"{PROG}: resumed from {self.args.resume} at epoch {self.epoch + 1}, step {self.step}{into}")
        changed = describe_changes(ck.get("args"), self.args)
        if changed:
            self.log(f"{PROG}: resuming with changed settings: {changed}")

    def _loader_info(self) -> dict[str, int]:
        return {"batch_size": self.args.batch_size, "grad_accumulation": self.accum,
                "world_size": self.ctx.world_size, "batches_per_epoch": self.batches_per_epoch}

    @staticmethod
    def _new_progress() -> dict[str, float]:
        return {"loss": 0.0, "task": 0.0, "decor": 0.0, "steps": 0, "skipped": 0, "seconds": 0.0, "samples": 0}

    # ---------------------------------------------------------------- checkpoints
    def _payload(self, rngs: list[dict[str, Any]], progress: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_config": model_config(self.model),
            "model": self.model.state_dict(),
            "data_config": self.data_config,
            "class_names": self.class_names,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "progress": progress[0],
            "progress_ranks": progress,
            "rng": {**rngs[0], "ranks": rngs},
            "args": config_record(self.args),  # the full resolved flags: --resume DIR alone continues the run
            "cwd": os.getcwd(),  # what relative paths in args are relative to
            "metrics": self.history[-1] if self.history else {},
            "history": self.history,
            "best": {"top1": self.best_top1, "epoch": self.best_epoch},
            "skipped_steps": self.skipped_total,
            "train_seconds": self.train_seconds,
            "loader": self._loader_info(),
            "gaheads_version": __version__,
        }

    def save(self, best: bool = False, keep: bool = False) -> Path:
        """Write last.pth (and best.pth / epoch-N.pth); a collective: every rank must call it."""
        rngs = dist_utils.all_gather_object(rng_state(self.device))
        progress = dist_utils.all_gather_object(dict(self.progress))
        path = self.out / "last.pth"
        problem = None
        if self.main:
            try:
                save_checkpoint(self._payload(rngs, progress), path)
                if best:
                    keep_copy(path, self.out / "best.pth")
                if keep:
                    keep_copy(path, self.out / f"epoch-{self.epoch}.pth")
            except CheckpointWriteError as e:
                problem = (str(e), e.exit_code)
        problem = dist_utils.broadcast_object(problem)
        if problem:
            raise CheckpointWriteError(*problem)
        self.last_saved = (path, self.epoch + (1 if self.epoch_step else 0), self.step)
        return path

    def _last_good(self) -> str:
        if self.last_saved is not None:
            path, epoch, step = self.last_saved
            return f"{path} (epoch {epoch}, step {step})"
        if self.resume is not None:
            return f"{self.args.resume} (the resumed one)"
        return "none written yet"

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        a = self.args
        if self.main:
            self.log(f"{PROG}: {a.model} ({self.num_params / 1e6:.2f}M params, {self.num_branches} branch"
                     f"{'es' if self.num_branches != 1 else ''}) on {a.dataset}: {len(self.train_set)} train / "
                     f"{len(self.val_set)} val images, {self.num_classes} classes, "
                     f"input {self.data_config['input_size']}"
                     f"; {self.ctx.world_size} process(es) on {self.device.type}; {self.updates_per_epoch} steps/epoch"
                     f"; output {self.out}")
        for epoch in range(self.epoch, a.epochs):
            if self.mixup is not None and a.mixup_off_epoch:
                self.mixup.mixup_enabled = epoch < a.mixup_off_epoch
            self._train_epoch(epoch)
            row = self._end_epoch(epoch)
            self.log(self._epoch_line(row))
            signum = self._agreed_signal()
            if signum and epoch + 1 < a.epochs:  # after the last epoch, finishing takes seconds: finish
                self._interrupt(signum, self.out / "last.pth")
        self.stop.phase = FINISHING
        return self._finish()

    def _agreed_signal(self) -> int:
        flag = torch.tensor([float(self.stop.signum)], device=self.device)
        return int(dist_utils.all_reduce(flag, "max").item())

    def _interrupt(self, signum: int, path: Path) -> None:
        raise TrainingInterrupted(signum, path, self._stop_message(signum, path))

    def _stop_message(self, signum: int, path: Path) -> str:
        """Where the run stopped and where its resume starts (epochs 1-based, steps counted over the run)."""
        epoch, step, nxt = self.epoch + 1, self.step, self.step + 1
        if not self.epoch_step:  # between epochs: epoch ``self.epoch`` is finished and evaluated
            where, then = f"after epoch {self.epoch}, step {step}", f"continues at epoch {epoch}, step {nxt}"
        elif self.epoch_step >= self.updates_per_epoch:  # the epoch's steps are done, its evaluation is not
            where = f"at epoch {epoch}, step {step}, before its evaluation ended"
            then = f"evaluates epoch {epoch}, then " + (
                f"continues at epoch {epoch + 1}, step {nxt}" if epoch < self.args.epochs else "finishes")
        else:
            where, then = f"at epoch {epoch}, step {step}", f"continues at epoch {epoch}, step {nxt}"
        return (f"stopped by {signal_name(signum)} {where}; resumable checkpoint {path}; resume with the same command "
                f"plus --resume {path} (or gaheads train --resume {path.parent} alone), which {then}")

    def _train_epoch(self, epoch: int) -> None:
        a = self.args
        loader, sampler = self.train_loader, self.train_loader.sampler
        sampler.set_epoch(epoch)
        start = self.epoch_step
        if start >= self.updates_per_epoch:  # stopped after the epoch's last step: only the evaluation is left
            if self.pending_rng is not None:  # as the uninterrupted run's evaluation began
                set_rng_state(self.pending_rng, self.device)
                self.pending_rng = None
            return
        if start:
            sampler.start_batch(start * self.accum)
        batches = iter(self._on_device(loader, train=True))  # runs nothing before the RNG states are set
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng, self.device)
            self.pending_rng = None
        self.train_model.train()
        bar = tqdm(total=self.updates_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{a.epochs}", leave=False,
                   disable=not self.main or a.no_progress, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        autocast = self._autocast()
        tick = time.perf_counter()
        for s in range(start, self.updates_per_epoch):
            group = self.accum if s < self.updates_per_epoch - 1 else self.batches_per_epoch - s * self.accum
            sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            bad_micro = []
            for m in range(group):
                x, y = next(batches)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if a.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if self.mixup is not None:
                    x, y = self.mixup(x, y)
                last_micro = m == group - 1
                no_sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else contextlib.nullcontext()
                with no_sync:
                    with autocast:
                        parts = self.loss_fn(forward_branches(self.train_model, x, self.multi_head), y)
                    loss = parts.loss
                    if m == 0 and self.step + 1 in self.nan_steps:
                        loss = loss * float("nan")  # test hook, see faults.NAN_STEPS_ENV
                    self.scaler.scale(loss / group).backward()
                sums += torch.stack([loss.detach(), parts.task.detach(), parts.decorrelation.detach()]).double()
                bad_micro.append(~torch.isfinite(loss.detach()))
            self.progress["samples"] += group * a.batch_size * self.ctx.world_size
            flags = dist_utils.all_reduce(torch.stack([torch.stack(bad_micro).any().float(),
                                                       torch.tensor(float(self.stop.signum), device=self.device)]),
                                          "max")
            # one host sync per step: the flags all ranks agree on, with this rank's mean losses
            bad_flag, signal_flag, *step_losses = torch.cat([flags.double(), sums / group]).tolist()
            bad, signum = int(bad_flag), int(signal_flag)
            if bad:
                self._skip_nonfinite(epoch, s, group, bad_micro)
            else:
                self._update()
            self.step += 1
            self.epoch_step = s + 1
            self.scheduler.step_update(num_updates=self.step)
            if not bad:
                self._accumulate(step_losses)
            now = time.perf_counter()
            self.progress["seconds"] += now - tick
            tick = now
            if self.step % a.log_interval == 0:
                self._log_step(epoch, sums / group, bar)
            bar.update(1)
            periodic = a.checkpoint_steps and self.step % a.checkpoint_steps == 0
            if signum or (periodic and s + 1 < self.updates_per_epoch):
                path = self.save()
                if signum:
                    bar.close()
                    self._interrupt(signum, path)
        bar.close()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _update(self) -> None:
        a = self.args
        if a.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), a.clip_grad, mode=a.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step + 1)

    def _accumulate(self, step_losses: list[float]) -> None:
        loss, task, decor = step_losses
        p = self.progress
        p["loss"], p["task"], p["decor"], p["steps"] = p["loss"] + loss, p["task"] + task, p["decor"] + decor, \
            p["steps"] + 1

    def _skip_nonfinite(self, epoch: int, s: int, group: int, bad_micro: list[torch.Tensor]) -> None:
        """Drop this step's gradients; stop with NonFiniteLossError beyond --skip-nonfinite such steps."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_total += 1
        self.progress["skipped"] += 1
        first_batch = s * self.accum
        mine = [first_batch + m for m, b in enumerate(bad_micro) if bool(b)]
        order = list(self.train_loader.sampler.inner)
        bs = self.args.batch_size
        indices = [i for b in mine for i in order[b * bs:(b + 1) * bs]]
        # sorted and unique: repeated augmentation puts one image in a batch several times
        all_indices = sorted({i for part in dist_utils.all_gather_object(indices) for i in part})
        where = (f"optimizer step {self.step + 1} (epoch {epoch + 1}, batch{'es' if group > 1 else ''} "
                 f"{first_batch + 1}{f'-{first_batch + group}' if group > 1 else ''} of {self.batches_per_epoch})")
        if self.skipped_total > self.args.skip_nonfinite:
            allowed = self.args.skip_nonfinite
            raise NonFiniteLossError(
                f"non-finite loss at {where}; sample indices {describe_indices(all_indices)}; "
                f"last good checkpoint: {self._last_good()}"
                + (f" ({allowed} such step{'s' if allowed != 1 else ''} already skipped)" if allowed else
                   " (--skip-nonfinite N skips up to N such steps)"))
        self.log(f"{PROG}: skipped {where}: non-finite loss, sample indices {describe_indices(all_indices)} "
                 f"({self.skipped_total} of {self.args.skip_nonfinite} allowed)")

    def _log_step(self, epoch: int, step_losses: torch.Tensor, bar: tqdm) -> None:
        losses = dist_utils.all_reduce(step_losses.clone(), "mean").tolist()
        lr = self.optimizer.param_groups[0]["lr"]
        if not self.main:
            return
        row = dict(zip(STEP_COLUMNS, [self.step, epoch + 1, *losses, lr]))
        append_text(self.out / "steps.csv",
                    ",".join(repr(v) if isinstance(v, float) else str(v) for v in row.values()) + "\n")
        seconds = max(self.progress["seconds"], 1e-9)
        bar.set_postfix(loss=f"{losses[0]:.4f}", lr=f"{lr:.2e}", img_s=f"{self.progress['samples'] / seconds:.0f}")

    def _prepare_step_log(self) -> None:
        """steps.csv: fresh on a new run; on resume keep only the rows up to the resumed step."""
        if not self.main:
            return
        path = self.out / "steps.csv"
        rows: list[str] = []
        if self.resume is not None and path.is_file():
            for line in path.read_text().splitlines()[1:]:
                fields = line.split(",")
                if len(fields) == len(STEP_COLUMNS) and fields[0].isdigit() and int(fields[0]) <= self.step:
                    rows.append(line)
        text = "\n".join([",".join(STEP_COLUMNS), *rows]) + "\n"
        write_text(path, text)

    # ---------------------------------------------------------------- evaluation and epoch end
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, Any], int]:
        """Ensemble and per-branch accuracy on the held-out split, summed over ranks; (metrics, samples)."""
        key = id(model)
        if key not in self._compiled_eval:
            self._compiled_eval[key] = self.eval_model(model)
        run = self._compiled_eval[key]
        model.eval()
        acc = BranchAccuracy(self.num_branches, self.device)
        self.val_loader.sampler.set_epoch(0)
        signum = 0
        with self._autocast():
            for i, (x, y) in enumerate(self._on_device(self.val_loader)):
                if self.stop.signum:  # leave at once: the resumed run evaluates again
                    signum = self.stop.signum
                    break
                for cb in self.callbacks:
                    cb.on_val_batch(self, i)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if self.args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                acc.update(forward_branches(run, x, self.multi_head), y)
        # each rank leaves at its own batch; all agree (one collective per evaluation) before the metric sums
        signum = self.stop.signum or signum
        signum = int(dist_utils.all_reduce(torch.tensor([float(signum)], device=self.device), "max").item())
        if signum:
            raise _EvaluationStopped(signum)
        acc.all_reduce()
        return acc.compute(), acc.samples

    def _skipped_files(self) -> list[str]:
        """The unreadable image files skipped so far, train then val, found by any rank or worker.

        Each rank marks the files it met in its dataset's shared mask; the masks are OR-ed over
        the ranks (a file two ranks met counts once).
        """
        paths: list[str] = []
        for ds in (self.train_set, self.val_set):
            mask = getattr(ds, "skipped_mask", None)
            if mask is None:  # in-memory datasets (CIFAR-100, mnist5k) have no files to skip
                continue
            found = dist_utils.all_reduce(mask.to(self.device, torch.uint8), "max").cpu()
            paths += [ds.samples[i][0] for i in torch.nonzero(found).flatten().tolist()]
        return paths

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        tick = time.perf_counter()
        self.stop.phase = EVALUATING
        try:
            metrics, samples = self.evaluate(self.ema.module if self.ema is not None else self.model)
            raw = self.evaluate(self.model)[0] if self.ema is not None else None
        except _EvaluationStopped as e:  # the epoch's steps are done (epoch_step == updates_per_epoch)
            self._interrupt(e.signum, self.save())
        self.stop.phase = TRAINING
        eval_seconds = time.perf_counter() - tick
        p = self.progress
        sums = torch.tensor([p["loss"], p["task"], p["decor"], p["steps"]], dtype=torch.float64, device=self.device)
        loss, task, decor, steps = dist_utils.all_reduce(sums, "sum").tolist()
        steps = max(steps, 1)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "loss": loss / steps, "task_loss": task / steps, "decor_loss": decor / steps,
            "top1": metrics["top1"], "top5": metrics["top5"],
            **{f"branch_top1_{k}": v for k, v in enumerate(metrics["branch_top1"])},
            **{f"branch_top5_{k}": v for k, v in enumerate(metrics["branch_top5"])},
            "agreement": metrics["agreement"],
            "eval_samples": samples, "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": p["seconds"], "eval_seconds": eval_seconds,
            "img_per_sec": p["samples"] / max(p["seconds"], 1e-9), "skipped_steps": int(p["skipped"]),
        }
        self.skipped_files = self._skipped_files()
        row["skipped_images"] = len(self.skipped_files)
        if raw is not None:
            row["model_top1"], row["model_top5"] = raw["top1"], raw["top5"]
        self.train_seconds += p["seconds"] + eval_seconds
        self.history.append(row)
        self.epoch, self.epoch_step, self.progress = epoch + 1, 0, self._new_progress()
        is_best = row["top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = row["top1"], epoch + 1
        every = self.args.save_every
        self.save(best=is_best, keep=bool(every) and (epoch + 1) % every == 0)
        if self.main:
            write_csv(self.out / "metrics.csv", epoch_columns(self.num_branches, self.ema is not None), self.history)
            plot_curves(self.out / "curves.png", self.history, self.num_branches,
                        title=f"{self.args.model} on {self.args.dataset}"
                              f"{f' {self.args.data_dir}' if self.args.data_dir else ''} — run {self.out}")
        return row

    def _epoch_line(self, row: dict[str, Any]) -> str:
        k = self.num_branches
        branches = ""
        if k > 1:
            branches = " branches [" + " ".join(f"{row[f'branch_top1_{i}']:.1f}" for i in range(k)) + "]"
        return (f"{PROG}: epoch {row['epoch']}/{self.args.epochs} loss {row['loss']:.4f} (task {row['task_loss']:.4f}, "
                f"decor {row['decor_loss']:.4f}) top-1 {row['top1']:.2f} top-5 {row['top5']:.2f}{branches} "
                f"lr {row['lr']:.2e} {row['epoch_seconds']:.1f}s {row['img_per_sec']:.0f} img/s"
                + (f"; {row['skipped_images']} unreadable image(s) skipped so far" if row["skipped_images"] else ""))

    def _finish(self) -> dict[str, Any]:
        last = self.history[-1]
        k = self.num_branches
        summary = {
            "model": self.args.model, "dataset": self.args.dataset, "epochs": self.epoch,
            "final_top1": last["top1"], "final_top5": last["top5"],
            "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "branch_top1": [last[f"branch_top1_{i}"] for i in range(k)],
            "branch_top5": [last[f"branch_top5_{i}"] for i in range(k)],
            "agreement": last["agreement"], "eval_samples": last["eval_samples"],
            "params": self.num_params, "num_branches": k, "num_classes": self.num_classes,
            "weights": "ema" if self.ema is not None else "model", "steps": self.step,
            "skipped_steps": self.skipped_total, "skipped_images": len(self.skipped_files),
            "skipped_files": self.skipped_files[:1000], "world_size": self.ctx.world_size, "seed": self.args.seed,
            "GA_lam": self.args.GA_lam, "img_per_sec": last["img_per_sec"], "output": str(self.out),
            "checkpoint": str(self.out / "last.pth"), "best_checkpoint": str(self.out / "best.pth"),
            "weights_file": str(self.out / "model.safetensors"), "curves": str(self.out / "curves.png"),
        }
        if self.main:
            final = self.ema.module if self.ema is not None else self.model
            try:
                save_weights(final, self.out / "model.safetensors", self.class_names,
                             extra={"data_config": self.data_config, "weights": summary["weights"],
                                    "epochs": self.epoch, "top1": last["top1"]})
                write_json(self.out / "summary.json", summary)
            except StorageError:
                raise  # already one line naming the file and the free space
            except OSError as e:
                raise CheckpointWriteError(f"cannot write the final weights in {self.out}: {e.strerror or e}") from e
            self.log(f"{PROG}: done: held-out top-1 {last['top1']:.2f}% (top-5 {last['top5']:.2f}%) on "
                     f"{last['eval_samples']} images after {self.epoch} epochs, {self.train_seconds:.1f} s of training"
                     f"\n  checkpoint: {self.out / 'last.pth'} (best: {self.out / 'best.pth'}, "
                     f"epoch {self.best_epoch}, "
                     f"top-1 {self.best_top1:.2f}%)\n  weights:    {self.out / 'model.safetensors'} (+ model.json"
                     f", {summary['weights']} weights)\n  curves:     {self.out / 'curves.png'}"
                     f"\n  metrics:    {self.out / 'metrics.csv'}, {self.out / 'summary.json'}")
        dist_utils.barrier()
        return summary
