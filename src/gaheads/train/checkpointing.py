"""Training checkpoints: the payload, atomic writes, kept copies, the last good one, and restoring a run.

A checkpoint (``last.pth``; ``best.pth`` and ``epoch-N.pth`` are hard links to finished ones)
holds the weights, optimizer / scheduler / scaler / EMA states, the ``TrainState`` keys, every
rank's RNG states and the resolved flags, as weights-only plain data (``gaheads.checkpoint``).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import (
    FORMAT,
    STORAGE_EXIT,
    CheckpointError,
    StorageError,
    atomic_write,
    check_state_dict,
    model_config,
    plain_data,
    save_torch,
    storage_error,
)
from . import distributed as dist_utils
from .config import PROG, ConfigError
from .train_state import TrainState

# what a hook gets once a checkpoint's temp file is complete, before the rename: (temp path, final path)
WrittenHook = Callable[[Path, Path], None]


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (folder not writable, disk full); the previous one is intact.

    ``exit_code``: 4 for a storage fault while writing (disk full, file-size limit, I/O error,
    read-only filesystem), 2 for an output folder refused before training starts.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_record(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The run's resolved flags as plain data: {dest: str | int | float | bool | None | list of those}.

    Tuples become lists and paths strings, so the record loads with ``torch.load(weights_only=True)``
    and compares equal to a fresh ``parse_args`` of the same command (whose list flags are lists).
    A value of any other type raises TypeError naming the flag.
    """
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {str(k): _plain_value(v, str(k)) for k, v in items.items()}


def _plain_value(value: Any, key: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_plain_value(v, key) for v in value]
    raise TypeError(f"flag {key}: {type(value).__name__} value {value!r} is not plain data")


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike,
                    on_written: WrittenHook | None = None) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (temp file, fsync, rename), as weights-only data.

    ``on_written(tmp, path)`` runs once the temp file is complete and closed, before the rename.
    A storage fault (disk full, file-size limit, I/O error, read-only filesystem, no permission)
    becomes a one-line CheckpointWriteError (exit code 4) naming the file and the free space left;
    the file previously at ``path`` is left as it was and the temp file removed.
    """
    path = Path(path)
    data = plain_data(dict(payload))

    def write(tmp: str) -> None:
        save_torch(data, tmp)
        if on_written is not None:
            on_written(Path(tmp), path)

    try:
        return atomic_write(path, write, "checkpoint")
    except StorageError as e:
        raise CheckpointWriteError(str(e), exit_code=e.exit_code) from e


def keep_copy(src: Path, dst: Path) -> Path:
    """Make ``dst`` an atomic copy of the finished checkpoint ``src``: a hard link when the filesystem allows.

    A hard link costs no space or time; it stays valid when ``src`` is later replaced by a rename.
    """
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        existed = dst.exists()
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(str(storage_error(dst, e, "checkpoint", existed)), exit_code=STORAGE_EXIT) from e
    return dst


class CheckpointManager:
    """Writes a run's checkpoints into ``out`` (rank 0 writes; every rank takes part) and remembers the last good one.

    ``resumed``: the checkpoint this run started from (named while none has been written).
    ``on_written`` is passed to ``save_checkpoint``.
    """

    def __init__(self, out: Path, main: bool, resumed: str | None = None,
                 on_written: WrittenHook | None = None) -> None:
        self.out, self.main, self.resumed, self.on_written = out, main, resumed, on_written
        self.last_saved: tuple[Path, int, int] | None = None  # (path, 1-based epoch, step)

    def save(self, payload: Callable[[], dict[str, Any]], state: TrainState, best: bool = False,
             keep: bool = False) -> Path:
        """Write last.pth (and best.pth / epoch-N.pth); a collective: every rank must call it.

        ``payload()`` builds the checkpoint (it may gather from the ranks) and is called on every rank.
        """
        data = payload()
        path = self.out / "last.pth"
        problem = None
        if self.main:
            try:
                save_checkpoint(data, path, self.on_written)
                if best:
                    keep_copy(path, self.out / "best.pth")
                if keep:
                    keep_copy(path, self.out / f"epoch-{state.epoch}.pth")
            except CheckpointWriteError as e:
                problem = (str(e), e.exit_code)
        problem = dist_utils.broadcast_object(problem)
        if problem:
            raise CheckpointWriteError(*problem)
        self.last_saved = (path, state.epoch + (1 if state.epoch_step else 0), state.step)
        return path

    def last_good(self) -> str:
        """The newest complete checkpoint, for messages: "<path> (epoch E, step S)"."""
        if self.last_saved is not None:
            path, epoch, step = self.last_saved
            return f"{path} (epoch {epoch}, step {step})"
        if self.resumed is not None:
            return f"{self.resumed} (the resumed one)"
        return "none written yet"


def training_payload(model: nn.Module, parts: Mapping[str, Any], state: dict[str, Any], rngs: list[dict[str, Any]],
                     args: argparse.Namespace, version: str) -> dict[str, Any]:
    """The checkpoint dict: ``parts`` (optimizer, scheduler, scaler, ema, data_config, class_names,
    loader: the state dicts and records to store), ``state`` (``TrainState.state_dict``) and every
    rank's RNG states ``rngs`` (rank order)."""
    return {
        "format": FORMAT,
        "model_config": model_config(model),
        "model": model.state_dict(),
        **parts,
        **state,
        "rng": {**rngs[0], "ranks": rngs},
        "args": config_record(args),  # the full resolved flags: --resume DIR alone continues the run
        "cwd": os.getcwd(),  # what relative paths in args are relative to
        "gaheads_version": version,
    }


# ---------------------------------------------------------------------------- restoring
def restore_weights(model: nn.Module, ema: nn.Module | None, ck: Mapping[str, Any], where: str,
                    log: Callable[[str], None]) -> None:
    """Load the checkpoint's weights into ``model`` and its EMA weights into ``ema`` (the EMA's module).

    A shape or key mismatch is a CheckpointError; when the checkpoint names another model it says so.
    """
    try:
        check_state_dict(model, ck["model"], where)
    except CheckpointError as e:
        theirs = (ck.get("model_config") or {}).get("name")
        if theirs and theirs != model_config(model)["name"]:
            raise CheckpointError(f"{e}; the checkpoint holds a {theirs}: leave out --model to resume it") from e
        raise
    model.load_state_dict(ck["model"])
    if ema is None:
        return
    if ck.get("ema") is not None:
        check_state_dict(ema, ck["ema"], f"{where} (EMA)")
        ema.load_state_dict(ck["ema"])
    else:
        log(f"{PROG}: the checkpoint has no EMA weights; the EMA starts from the resumed weights")
        ema.load_state_dict(ck["model"])


def restore_optimizer(optimizer: Any, scaler: Any, ck: Mapping[str, Any], where: str, opt_name: str) -> None:
    """The optimizer's and grad scaler's states; ConfigError when there is none or it does not fit."""
    if ck.get("optimizer") is None:
        raise ConfigError(f"{where}: checkpoint has no optimizer state (is it a training checkpoint?)")
    try:
        optimizer.load_state_dict(ck["optimizer"])
    except ValueError as e:
        raise ConfigError(f"{where}: optimizer state does not fit --opt {opt_name} ({e})") from e
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])


def check_loader(ck: Mapping[str, Any], mine: dict[str, int], where: str) -> None:
    """A mid-epoch checkpoint resumes only with the batching it was written with (``mine``: this run's)."""
    loader = ck.get("loader") or {}
    if int(ck.get("epoch_step", 0)) and loader != mine:
        raise ConfigError(f"{where}: the checkpoint was written mid-epoch with {loader}; resume it with the same "
                          f"batch size, accumulation and number of processes (now {mine})")


def restore_schedule(scheduler: Any, ck: Mapping[str, Any], step: int, log: Callable[[str], None]) -> None:
    """The lr schedule's state when its shape is unchanged (else the new one, said once), moved to ``step``."""
    saved = ck.get("scheduler") or {}
    fresh = scheduler.state_dict()
    if all(saved.get(k) == fresh.get(k) for k in ("t_initial", "warmup_t", "lr_min", "warmup_lr_init")):
        scheduler.load_state_dict(saved)
    else:
        log(f"{PROG}: the lr schedule differs from the checkpoint's (epochs, batches or lr flags changed); "
            f"following the new one from step {step}")
    scheduler.step_update(num_updates=step)
