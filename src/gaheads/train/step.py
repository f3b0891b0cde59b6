"""One optimizer step: ``--grad-accumulation`` micro-batches, then one update (or none, when a loss is not finite)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from timm.utils import dispatch_clip_grad
from torch import nn

from . import distributed as dist_utils

# a loss hook: (1-based optimizer step, 0-based micro-batch, loss) -> the loss to back-propagate
LossHook = Callable[[int, int, torch.Tensor], torch.Tensor]


def forward_branches(model: nn.Module, x: torch.Tensor, multi_head: bool) -> torch.Tensor:
    """Per-branch logits (B, K, n); a plain timm classifier counts as one branch."""
    out = model(x, return_branches=True) if multi_head else model(x)
    return out if out.ndim == 3 else out.unsqueeze(1)


@dataclass
class StepResult:
    """What one optimizer step did.

    ``losses``: this rank's mean (loss, task, decor) over the micro-batches; ``mean``: the same as
    a float64 tensor (3,) on the device, for the all-rank average of the step log; ``nonfinite``:
    some rank's loss was NaN/inf, so no rank updated; ``bad_micro``: this rank's per-micro-batch
    non-finite flags (bool tensors); ``signum``: the largest stop signal any rank has received.
    """

    losses: list[float]
    mean: torch.Tensor
    nonfinite: bool
    bad_micro: list[torch.Tensor]
    signum: int
    samples: int


class TrainStep:
    """Runs optimizer steps on ``model`` (``train_model``: what the forward pass calls, DDP- or compile-wrapped).

    Per step: forward and backward of each micro-batch (DDP ``no_sync`` on all but the last),
    one agreement of all ranks on (non-finite?, signal?) — the step's one host sync — then an
    optional gradient clip, the optimizer update and the EMA update, or dropped gradients.
    """

    def __init__(self, *, model: nn.Module, train_model: nn.Module, ddp: nn.Module | None,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ema: nn.Module | None,
                 loss_fn: nn.Module, mixup: Callable | None, device: torch.device, amp_dtype: torch.dtype | None,
                 channels_last: bool, multi_head: bool, clip_grad: float | None, clip_mode: str,
                 samples_per_batch: int, stop_signal: Callable[[], int],
                 loss_hooks: list[LossHook] | None = None) -> None:
        self.model, self.train_model, self.ddp, self.optimizer = model, train_model, ddp, optimizer
        self.scaler, self.ema, self.loss_fn, self.mixup = scaler, ema, loss_fn, mixup
        self.device, self.amp_dtype, self.channels_last, self.multi_head = device, amp_dtype, channels_last, multi_head
        self.clip_grad, self.clip_mode, self.samples_per_batch = clip_grad, clip_mode, samples_per_batch
        self.stop_signal, self.loss_hooks = stop_signal, list(loss_hooks or [])
        self._autocast = self.autocast()  # one context object, entered once per micro-batch

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def __call__(self, batches: Iterator, group: int, step: int) -> StepResult:
        """Optimizer step ``step`` (1-based) over the next ``group`` micro-batches of ``batches``."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        bad_micro = [self._micro_batch(next(batches), m, group, step, sums) for m in range(group)]
        flags = dist_utils.all_reduce(torch.stack([torch.stack(bad_micro).any().float(),
                                                   torch.tensor(float(self.stop_signal()), device=self.device)]),
                                      "max")
        mean = sums / group
        bad_flag, signal_flag, *losses = torch.cat([flags.double(), mean]).tolist()
        nonfinite = bool(bad_flag)
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self._update(step)
        return StepResult(losses, mean, nonfinite, bad_micro, int(signal_flag), group * self.samples_per_batch)

    def _micro_batch(self, batch: tuple[torch.Tensor, torch.Tensor], m: int, group: int, step: int,
                     sums: torch.Tensor) -> torch.Tensor:
        """Forward and backward of micro-batch ``m``, adding its (loss, task, decor) to ``sums``; non-finite?"""
        x, y = batch
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        last = m == group - 1
        no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with no_sync:
            with self._autocast:
                parts = self.loss_fn(forward_branches(self.train_model, x, self.multi_head), y)
            loss = parts.loss
            for hook in self.loss_hooks:
                loss = hook(step, m, loss)
            self.scaler.scale(loss / group).backward()
        sums += torch.stack([loss.detach(), parts.task.detach(), parts.decorrelation.detach()]).double()
        return ~torch.isfinite(loss.detach())

    def _update(self, step: int) -> None:
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), self.clip_grad, mode=self.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=step)
