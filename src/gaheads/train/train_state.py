"""Where a training run stands: counters, best metric, history and the current epoch's running sums.

``TrainState.state_dict()`` is the flat part of a checkpoint that says where the run is
(``epoch``, ``step``, ``epoch_step``, ``progress``, ``history``, ``best``, ``skipped_steps``,
``train_seconds``); ``load_state_dict`` reads it back, also from checkpoints that predate
``epoch_step`` or the per-rank ``progress_ranks``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class EpochProgress:
    """This rank's sums over the optimizer steps of the unfinished epoch.

    ``loss``/``task``/``decor`` sum the per-step mean losses of the finite steps (``steps`` of
    them); ``skipped`` counts the non-finite steps, ``seconds`` the training time (no
    evaluation) and ``samples`` the images all ranks consumed.
    """

    loss: float = 0.0
    task: float = 0.0
    decor: float = 0.0
    steps: int = 0
    skipped: int = 0
    seconds: float = 0.0
    samples: int = 0

    def add_losses(self, losses: list[float]) -> None:
        """Add one finite step's (loss, task, decor)."""
        loss, task, decor = losses
        self.loss += loss
        self.task += task
        self.decor += decor
        self.steps += 1

    def tick(self, since: float) -> float:
        """Count the time from ``since`` (a ``perf_counter`` value) as training; now, for the next call."""
        now = time.perf_counter()
        self.seconds += now - since
        return now

    def images_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochProgress:
        """From ``state_dict()``'s dict (the checkpoint's ``progress``); unknown keys are ignored."""
        kinds = {f.name: type(f.default) for f in fields(cls)}
        return cls(**{k: kinds[k](v) for k, v in data.items() if k in kinds})


@dataclass
class TrainState:
    """Counters of one run; replaced by the checkpoint's on resume.

    ``epoch``: completed epochs; ``step``: optimizer steps taken (skipped non-finite ones
    included); ``epoch_step``: steps done inside the current, unfinished epoch; ``pending_rng``:
    this rank's RNG states from a checkpoint, applied when training restarts.
    """

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    skipped_total: int = 0
    skipped_files: list[str] = field(default_factory=list)  # unreadable images met so far (all ranks)
    train_seconds: float = 0.0
    progress: EpochProgress = field(default_factory=EpochProgress)
    pending_rng: dict[str, Any] | None = None

    def end_epoch(self, row: dict[str, Any]) -> bool:
        """Record the finished epoch's metrics ``row``; whether its top-1 is the best so far."""
        self.history.append(row)
        self.epoch, self.epoch_step, self.progress = self.epoch + 1, 0, EpochProgress()
        if row["top1"] > self.best_top1:
            self.best_top1, self.best_epoch = row["top1"], self.epoch
            return True
        return False

    def state_dict(self, progress_ranks: list[dict[str, float]] | None = None) -> dict[str, Any]:
        """The checkpoint's run-position keys; ``progress_ranks``: every rank's ``progress`` (rank order)."""
        ranks = progress_ranks if progress_ranks is not None else [self.progress.state_dict()]
        return {
            "epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step,
            "progress": ranks[0], "progress_ranks": ranks,
            "metrics": self.history[-1] if self.history else {}, "history": self.history,
            "best": {"top1": self.best_top1, "epoch": self.best_epoch},
            "skipped_steps": self.skipped_total, "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, ck: Mapping[str, Any], rank: int = 0) -> None:
        """Take a checkpoint's position; the partial-epoch sums are ``rank``'s (or the one ``progress``)."""
        self.epoch, self.step, self.epoch_step = int(ck["epoch"]), int(ck["step"]), int(ck.get("epoch_step", 0))
        self.history = list(ck.get("history", []))
        best = ck.get("best") or {}
        self.best_top1, self.best_epoch = float(best.get("top1", -1.0)), int(best.get("epoch", 0))
        self.skipped_total = int(ck.get("skipped_steps", 0))
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        self.progress = EpochProgress()
        if self.epoch_step:  # mid-epoch: the sums so far (the caller checked the world size is the same)
            per_rank = ck.get("progress_ranks")
            self.progress = EpochProgress.from_dict(per_rank[rank] if per_rank else ck["progress"])
