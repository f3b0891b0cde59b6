"""The training loop: timm's optimizer, scheduler, EMA and Mixup around gaheads' multi-head loss.

``train(args)`` (args from ``config.parse_args``) trains, evaluates every epoch and returns the
run's summary (also written to ``summary.json``). Per optimizer step (``step.TrainStep``):
``--grad-accumulation`` micro-batches (DDP ``no_sync`` on all but the last), an optional gradient
clip, one optimizer update, one EMA update, one scheduler ``step_update`` — so warmup and cosine
are per update.

The parts: ``train_state`` (where the run stands), ``checkpointing`` (payload, atomic writes,
restore), ``run_log`` (CSV logs, curves, summary, console lines), ``step`` (one optimizer step),
``build`` (data, model, optimization from the flags), ``output_folder`` (the locked run folder).

Resume is exact: a checkpoint records the optimizer step, the position inside the epoch, the
partial epoch's loss sums and every rank's RNG states; batches are a pure function of
(seed, epoch, index) (gaheads.data), so a resumed run follows the same trajectory.

Raises ``config.ConfigError``, ``gaheads.data.DataError``, ``gaheads.checkpoint.CheckpointError``
or ``checkpointing.CheckpointWriteError`` for bad input (one line), ``faults.NonFiniteLossError``
and ``faults.TrainingInterrupted`` when training stops early (see ``faults``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..checkpoint import StorageError, load_checkpoint, resolve_checkpoint, save_weights
from ..data.prefetch import DevicePrefetcher
from ..flops import count_params
from ..metrics import BranchAccuracy
from . import build
from . import distributed as dist_utils
from .checkpointing import (
    CheckpointManager,
    CheckpointWriteError,
    check_loader,
    restore_optimizer,
    restore_schedule,
    restore_weights,
    training_payload,
)
from .config import PROG, ConfigError, describe_changes
from .faults import (
    EVALUATING,
    FINISHING,
    STARTUP,
    TRAINING,
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    describe_indices,
    signal_name,
)
from .output_folder import OutputFolder
from .rng import rank_rng, rng_state, seed_everything, set_rng_state
from .run_log import RunLog
from .step import StepResult, TrainStep, forward_branches
from .train_state import TrainState

__all__ = ["PROG", "Trainer", "TrainerCallback", "forward_branches", "train"]


class TrainerCallback:
    """Hooks a caller (a test, a tool) passes to ``train``; every method is a no-op here.

    Only the hooks a callback overrides are called, so the unused ones cost nothing; ``on_loss``
    and ``on_step_end`` are the only ones inside the step loop.
    """

    def on_startup(self, trainer: Trainer, stage: str) -> None:
        """Start-up reached ``stage``: "output" (folder locked), "data" (datasets built), "model"."""

    def on_loss(self, trainer: Trainer, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of micro-batch ``micro`` (0-based) of optimizer step ``step`` (1-based, counted
        across resumes), before its backward pass; what is returned is back-propagated."""
        return loss

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """Optimizer step ``trainer.state.step`` is done (and logged); a signal sent now stops at the next one."""

    def on_val_batch(self, trainer: Trainer, index: int) -> None:
        """Evaluation is about to run its ``index``-th batch (0-based)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Epoch ``row["epoch"]`` is evaluated, checkpointed and logged (``row``: its metrics.csv row)."""

    def on_checkpoint_written(self, trainer: Trainer, tmp: Path, path: Path) -> None:
        """Rank 0 wrote a checkpoint completely to ``tmp``; it is renamed to ``path`` next."""

    def on_checkpoint_saved(self, trainer: Trainer, path: Path) -> None:
        """Every rank: the checkpoint ``path`` (and its kept copies) is in place."""


class _EvaluationStopped(Exception):
    """A signal arrived during evaluation; every rank agreed to leave it (``signum``: the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def train(args: argparse.Namespace, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train as ``args`` says; the summary dict (the same as ``summary.json``).

    ``callbacks`` get the ``TrainerCallback`` hooks (tests use them to make a phase slow or a loss non-finite).
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


class Trainer:
    """One training run: built from args, ``fit()`` runs it to the end (or raises to stop early).

    ``state`` (a ``TrainState``) says where the run stands; ``checkpoints`` writes and names the
    checkpoints; ``run_log`` writes the logs; ``train_step`` runs one optimizer step.
    """

    def __init__(self, args: argparse.Namespace, ctx: dist_utils.DistContext, stop: StopRequest,
                 callbacks: list[TrainerCallback] | None = None) -> None:
        self.args, self.ctx, self.stop = args, ctx, stop
        self.callbacks = list(callbacks or [])
        self.device, self.main = ctx.device, ctx.is_main
        self.state = TrainState()
        self._set_determinism()
        if args.resume:  # --resume RUN_DIR means its last.pth
            args.resume = str(resolve_checkpoint(args.resume, training=True))
        self.resume = load_checkpoint(args.resume) if args.resume else None
        if args.resume:
            stop.startup_note = f"; {args.resume} is unchanged"
        self.folder = OutputFolder(args, self.main, self.log)
        try:
            self.out = self.folder.open()
            self._set_up()
        except BaseException:  # a refusal, bad input or a signal during start-up: let go of the folder
            self.close()
            raise

    def _set_up(self) -> None:
        args = self.args
        self._hook("on_startup", "output")
        seed_everything(args.seed)  # same initial weights on every rank
        self.data_config = build.data_config(args)
        data = build.build_data(args, self.data_config, self.ctx)
        self.train_set, self.val_set, self.class_names = data.train_set, data.val_set, data.class_names
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.batches_per_epoch, self.accum, self.updates_per_epoch = \
            data.batches_per_epoch, data.accum, data.updates_per_epoch
        self._hook("on_startup", "data")
        self.num_classes = args.num_classes or len(self.class_names)
        if self.num_classes < len(self.class_names):
            raise ConfigError(f"--num-classes {self.num_classes} is fewer than the dataset's "
                              f"{len(self.class_names)} classes")
        self._build_model()
        opt = build.build_optimization(args, self.model, self.num_classes, self.updates_per_epoch, self.device,
                                       self.log)
        self.optimizer, self.scheduler, self.scaler = opt.optimizer, opt.scheduler, opt.scaler
        self.mixup, self.loss_fn = opt.mixup, opt.loss_fn
        self.ddp, self.train_model, self.eval_model = build.wrap_model(self.model, args, self.ctx)
        self._compiled_eval: dict[int, nn.Module] = {}
        self.train_step = self._build_step(opt.amp_dtype)
        self._hook("on_startup", "model")

        written = lambda tmp, path: self._hook("on_checkpoint_written", tmp, path)  # noqa: E731
        self.checkpoints = CheckpointManager(self.out, self.main, args.resume or None, on_written=written)
        title = f"{args.model} on {args.dataset}{f' {args.data_dir}' if args.data_dir else ''} — run {self.out}"
        self.run_log = RunLog(self.out, self.main, self.num_branches, self.ema is not None, args.epochs, title)
        seed_everything(args.seed + self.ctx.rank)  # augmentation noise differs per rank
        if self.resume is not None:
            self._restore(self.resume)
        self.stop.phase = TRAINING  # from here a signal stops with a resumable checkpoint
        self.run_log.start_steps(self.resume is not None, self.state.step)

    def _build_model(self) -> None:
        a = self.args
        model = build.build_model(a, self.num_classes)
        self.multi_head = build.is_multi_head(model)
        self.num_branches = model.num_branches if self.multi_head else 1
        self.num_params = count_params(model)["total"]
        model.to(self.device)
        if a.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: what is saved, EMA'd and evaluated
        self.ema = ModelEmaV3(model, decay=a.model_ema_decay, use_warmup=a.model_ema_warmup) if a.model_ema else None

    def _build_step(self, amp_dtype: torch.dtype | None) -> TrainStep:
        a = self.args
        loss_hooks = [lambda step, micro, loss, f=f: f(self, step, micro, loss) for f in self._overridden("on_loss")]
        return TrainStep(model=self.model, train_model=self.train_model, ddp=self.ddp, optimizer=self.optimizer,
                         scaler=self.scaler, ema=self.ema, loss_fn=self.loss_fn, mixup=self.mixup, device=self.device,
                         amp_dtype=amp_dtype, channels_last=a.channels_last, multi_head=self.multi_head,
                         clip_grad=a.clip_grad, clip_mode=a.clip_mode,
                         samples_per_batch=a.batch_size * self.ctx.world_size,
                         stop_signal=lambda: self.stop.signum, loss_hooks=loss_hooks)

    def _overridden(self, name: str) -> list[Callable[..., Any]]:
        """The callbacks' ``name`` methods that do something (a subclass overrides them)."""
        base = getattr(TrainerCallback, name)
        return [getattr(cb, name) for cb in self.callbacks if getattr(type(cb), name, base) is not base]

    def _hook(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(self, *args)

    def close(self) -> None:
        """Release the output folder (its lock; the folder itself when this run created it and left it empty)."""
        self.folder.close()

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def _set_determinism(self) -> None:
        if self.args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _on_device(self, loader: Any, train: bool = False) -> Any:
        """``loader`` itself, or its batches normalised on the device (uint8 images from the workers)."""
        if not build.prefetching(self.args, self.device):
            return loader
        a = self.args
        return DevicePrefetcher(loader, self.device, self.data_config["mean"], self.data_config["std"],
                                channels_last=a.channels_last, re_prob=a.reprob if train else 0.0,
                                re_mode=a.remode, re_count=a.recount)

    # ---------------------------------------------------------------- checkpoints
    def _restore(self, ck: dict[str, Any]) -> None:
        """Load everything a checkpoint holds; the RNG states are applied when training restarts."""
        where, st = f"--resume {self.args.resume}", self.state
        restore_weights(self.model, self.ema.module if self.ema is not None else None, ck, where, self.log)
        restore_optimizer(self.optimizer, self.scaler, ck, where, self.args.opt)
        check_loader(ck, self._loader_info(), where)
        st.load_state_dict(ck, self.ctx.rank)
        restore_schedule(self.scheduler, ck, st.step, self.log)
        st.pending_rng = rank_rng(ck.get("rng"), self.ctx.rank, self.ctx.world_size)
        into = f" ({st.epoch_step} of {self.updates_per_epoch} steps into the epoch)" if st.epoch_step else ""
        self.log(f"{PROG}: resumed from {self.args.resume} at epoch {st.epoch + 1}, step {st.step}{into}")
        changed = describe_changes(ck.get("args"), self.args)
        if changed:
            self.log(f"{PROG}: resuming with changed settings: {changed}")

    def _loader_info(self) -> dict[str, int]:
        return {"batch_size": self.args.batch_size, "grad_accumulation": self.accum,
                "world_size": self.ctx.world_size, "batches_per_epoch": self.batches_per_epoch}

    def _payload(self) -> dict[str, Any]:
        """The checkpoint of this moment; a collective (every rank's RNG states and epoch sums)."""
        rngs = dist_utils.all_gather_object(rng_state(self.device))
        progress = dist_utils.all_gather_object(self.state.progress.state_dict())
        parts = {"data_config": self.data_config, "class_names": self.class_names,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(),
                 "ema": self.ema.module.state_dict() if self.ema is not None else None, "loader": self._loader_info()}
        return training_payload(self.model, parts, self.state.state_dict(progress), rngs, self.args, __version__)

    def save(self, best: bool = False, keep: bool = False) -> Path:
        """Write last.pth (and best.pth / epoch-N.pth); a collective: every rank must call it."""
        path = self.checkpoints.save(self._payload, self.state, best=best, keep=keep)
        self._hook("on_checkpoint_saved", path)
        return path

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        a, epoch_end = self.args, self._overridden("on_epoch_end")
        self.log(self._start_line())
        for epoch in range(self.state.epoch, a.epochs):
            if self.mixup is not None and a.mixup_off_epoch:
                self.mixup.mixup_enabled = epoch < a.mixup_off_epoch
            self._train_epoch(epoch)
            row = self._end_epoch(epoch)
            self.log(self.run_log.epoch_line(row))
            for hook in epoch_end:
                hook(self, row)
            signum = self._agreed_signal()
            if signum and epoch + 1 < a.epochs:  # after the last epoch, finishing takes seconds: finish
                self._interrupt(signum, self.out / "last.pth")
        self.stop.phase = FINISHING
        return self._finish()

    def _start_line(self) -> str:
        k = self.num_branches
        return (f"{PROG}: {self.args.model} ({self.num_params / 1e6:.2f}M params, {k} branch{'es' if k != 1 else ''})"
                f" on {self.args.dataset}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                f"{self.num_classes} classes, input {self.data_config['input_size']}; {self.ctx.world_size} "
                f"process(es) on {self.device.type}; {self.updates_per_epoch} steps/epoch; output {self.out}")

    def _agreed_signal(self) -> int:
        flag = torch.tensor([float(self.stop.signum)], device=self.device)
        return int(dist_utils.all_reduce(flag, "max").item())

    def _interrupt(self, signum: int, path: Path) -> None:
        raise TrainingInterrupted(signum, path, self._stop_message(signum, path))

    def _stop_message(self, signum: int, path: Path) -> str:
        """Where the run stopped and where its resume starts (epochs 1-based, steps counted over the run)."""
        st = self.state
        epoch, step, nxt = st.epoch + 1, st.step, st.step + 1
        if not st.epoch_step:  # between epochs: epoch ``st.epoch`` is finished and evaluated
            where, then = f"after epoch {st.epoch}, step {step}", f"continues at epoch {epoch}, step {nxt}"
        elif st.epoch_step >= self.updates_per_epoch:  # the epoch's steps are done, its evaluation is not
            where = f"at epoch {epoch}, step {step}, before its evaluation ended"
            then = f"evaluates epoch {epoch}, then " + (
                f"continues at epoch {epoch + 1}, step {nxt}" if epoch < self.args.epochs else "finishes")
        else:
            where, then = f"at epoch {epoch}, step {step}", f"continues at epoch {epoch}, step {nxt}"
        return (f"stopped by {signal_name(signum)} {where}; resumable checkpoint {path}; resume with the same command "
                f"plus --resume {path} (or gaheads train --resume {path.parent} alone), which {then}")

    def _train_epoch(self, epoch: int) -> None:
        batches = self._start_epoch(epoch)
        if batches is None:  # stopped after the epoch's last step: only the evaluation is left
            return
        st, bar, step_end = self.state, self._progress_bar(epoch), self._overridden("on_step_end")
        tick = time.perf_counter()
        for s in range(st.epoch_step, self.updates_per_epoch):
            result = self.train_step(batches, self._group(s), st.step + 1)
            st.progress.samples += result.samples
            if result.nonfinite:
                self._skip_nonfinite(epoch, s, result.bad_micro)
            st.step, st.epoch_step = st.step + 1, s + 1
            self.scheduler.step_update(num_updates=st.step)
            if not result.nonfinite:
                st.progress.add_losses(result.losses)
            tick = st.progress.tick(tick)
            self._after_step(epoch, result, bar, step_end)
        bar.close()

    def _start_epoch(self, epoch: int) -> Iterator | None:
        """Position the sampler (mid-epoch on resume) and restore pending RNG states; the batch
        iterator, or None when the epoch's steps are all done."""
        sampler, st = self.train_loader.sampler, self.state
        sampler.set_epoch(epoch)
        if st.epoch_step >= self.updates_per_epoch:
            self._apply_pending_rng()  # as the uninterrupted run's evaluation began
            return None
        if st.epoch_step:
            sampler.start_batch(st.epoch_step * self.accum)
        batches = iter(self._on_device(self.train_loader, train=True))  # runs nothing before the RNG states are set
        self._apply_pending_rng()
        self.train_model.train()
        return batches

    def _apply_pending_rng(self) -> None:
        if self.state.pending_rng is not None:
            set_rng_state(self.state.pending_rng, self.device)
            self.state.pending_rng = None

    def _progress_bar(self, epoch: int) -> tqdm:
        a = self.args
        return tqdm(total=self.updates_per_epoch, initial=self.state.epoch_step, desc=f"epoch {epoch + 1}/{a.epochs}",
                    leave=False, disable=not self.main or a.no_progress, dynamic_ncols=True, mininterval=1.0,
                    file=sys.stderr)

    def _group(self, s: int) -> int:
        """Micro-batches in step ``s`` of the epoch (0-based): --grad-accumulation, fewer in the last."""
        return self.accum if s < self.updates_per_epoch - 1 else self.batches_per_epoch - s * self.accum

    def _after_step(self, epoch: int, result: StepResult, bar: tqdm, step_end: list[Callable[..., Any]]) -> None:
        """Log, advance the bar, run the callbacks, then checkpoint (every --checkpoint-steps, or on a signal)."""
        a, st = self.args, self.state
        if st.step % a.log_interval == 0:
            losses = dist_utils.all_reduce(result.mean.clone(), "mean").tolist()
            lr = self.optimizer.param_groups[0]["lr"]
            self.run_log.step(st.step, epoch, losses, lr)
            if self.main:
                bar.set_postfix(loss=f"{losses[0]:.4f}", lr=f"{lr:.2e}", img_s=f"{st.progress.images_per_second():.0f}")
        bar.update(1)
        for hook in step_end:
            hook(self, result)
        periodic = a.checkpoint_steps and st.step % a.checkpoint_steps == 0
        if result.signum or (periodic and st.epoch_step < self.updates_per_epoch):
            path = self.save()
            if result.signum:
                bar.close()
                self._interrupt(result.signum, path)

    def _skip_nonfinite(self, epoch: int, s: int, bad_micro: list[torch.Tensor]) -> None:
        """Count a step whose gradients were dropped; NonFiniteLossError beyond --skip-nonfinite such steps."""
        st, group = self.state, len(bad_micro)
        st.skipped_total += 1
        st.progress.skipped += 1
        first_batch = s * self.accum
        mine = [first_batch + m for m, b in enumerate(bad_micro) if bool(b)]
        order = list(self.train_loader.sampler.inner)
        bs = self.args.batch_size
        indices = [i for b in mine for i in order[b * bs:(b + 1) * bs]]
        # sorted and unique: repeated augmentation puts one image in a batch several times
        all_indices = sorted({i for part in dist_utils.all_gather_object(indices) for i in part})
        where = (f"optimizer step {st.step + 1} (epoch {epoch + 1}, batch{'es' if group > 1 else ''} "
                 f"{first_batch + 1}{f'-{first_batch + group}' if group > 1 else ''} of {self.batches_per_epoch})")
        allowed = self.args.skip_nonfinite
        if st.skipped_total > allowed:
            raise NonFiniteLossError(
                f"non-finite loss at {where}; sample indices {describe_indices(all_indices)}; "
                f"last good checkpoint: {self.checkpoints.last_good()}"
                + (f" ({allowed} such step{'s' if allowed != 1 else ''} already skipped)" if allowed else
                   " (--skip-nonfinite N skips up to N such steps)"))
        self.log(f"{PROG}: skipped {where}: non-finite loss, sample indices {describe_indices(all_indices)} "
                 f"({st.skipped_total} of {allowed} allowed)")

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
        with self.train_step.autocast():
            for i, (x, y) in enumerate(self._on_device(self.val_loader)):
                if self.stop.signum:  # leave at once: the resumed run evaluates again
                    signum = self.stop.signum
                    break
                self._hook("on_val_batch", i)
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
        """Evaluate, record and checkpoint the finished ``epoch`` (0-based); its metrics.csv row."""
        tick = time.perf_counter()
        self.stop.phase = EVALUATING
        try:
            metrics, samples = self.evaluate(self.ema.module if self.ema is not None else self.model)
            raw = self.evaluate(self.model)[0] if self.ema is not None else None
        except _EvaluationStopped as e:  # the epoch's steps are done (epoch_step == updates_per_epoch)
            self._interrupt(e.signum, self.save())
        self.stop.phase = TRAINING
        row = self._epoch_row(epoch, metrics, samples, raw, time.perf_counter() - tick)
        st = self.state
        st.skipped_files = self._skipped_files()
        row["skipped_images"] = len(st.skipped_files)
        st.train_seconds += row["epoch_seconds"] + row["eval_seconds"]
        is_best = st.end_epoch(row)
        every = self.args.save_every
        self.save(best=is_best, keep=bool(every) and (epoch + 1) % every == 0)
        self.run_log.end_epoch(st.history)
        return row

    def _epoch_row(self, epoch: int, metrics: dict[str, Any], samples: int, raw: dict[str, Any] | None,
                   eval_seconds: float) -> dict[str, Any]:
        """The metrics.csv row: the epoch's mean losses over all ranks' finite steps, accuracy, lr, timing."""
        p = self.state.progress
        sums = torch.tensor([p.loss, p.task, p.decor, p.steps], dtype=torch.float64, device=self.device)
        loss, task, decor, steps = dist_utils.all_reduce(sums, "sum").tolist()
        steps = max(steps, 1)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "loss": loss / steps, "task_loss": task / steps, "decor_loss": decor / steps,
            "top1": metrics["top1"], "top5": metrics["top5"],
            **{f"branch_top1_{k}": v for k, v in enumerate(metrics["branch_top1"])},
            **{f"branch_top5_{k}": v for k, v in enumerate(metrics["branch_top5"])},
            "agreement": metrics["agreement"],
            "eval_samples": samples, "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": p.seconds, "eval_seconds": eval_seconds,
            "img_per_sec": p.images_per_second(), "skipped_steps": int(p.skipped),
        }
        if raw is not None:
            row["model_top1"], row["model_top5"] = raw["top1"], raw["top5"]
        return row

    def _finish(self) -> dict[str, Any]:
        st, a = self.state, self.args
        summary = self.run_log.summary(st.history[-1], {
            "model": a.model, "dataset": a.dataset, "epochs": st.epoch, "best_top1": st.best_top1,
            "best_epoch": st.best_epoch, "train_seconds": st.train_seconds, "params": self.num_params,
            "num_classes": self.num_classes, "weights": "ema" if self.ema is not None else "model", "steps": st.step,
            "skipped_steps": st.skipped_total, "skipped_files": st.skipped_files, "world_size": self.ctx.world_size,
            "seed": a.seed, "GA_lam": a.GA_lam})
        if self.main:
            final = self.ema.module if self.ema is not None else self.model
            try:
                save_weights(final, self.out / "model.safetensors", self.class_names,
                             extra={"data_config": self.data_config, "weights": summary["weights"],
                                    "epochs": st.epoch, "top1": summary["final_top1"]})
                self.run_log.write_summary(summary)
            except StorageError:
                raise  # already one line naming the file and the free space
            except OSError as e:
                raise CheckpointWriteError(f"cannot write the final weights in {self.out}: {e.strerror or e}") from e
            self.log(self.run_log.done_line(summary))
        dist_utils.barrier()
        return summary
