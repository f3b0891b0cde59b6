"""Training-state persistence: RNG states, atomic checkpoint writes, keeping extra copies.

Test hooks (environment variables, for fault-injection tests only):

- ``GAHEADS_TEST_SAVE_PAUSE=SECONDS``: after a checkpoint's temp file is completely written and
  closed, and before it is renamed into place, print ``SAVE-PAUSE <final path>`` to stdout
  (flushed) and sleep that long — a test can SIGKILL the process inside the save window and
  check that the previous checkpoint survives.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import STORAGE_EXIT, StorageError, atomic_save, storage_error

SAVE_PAUSE_ENV = "GAHEADS_TEST_SAVE_PAUSE"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (folder not writable, disk full); the previous one is intact.

    ``exit_code``: 4 for a storage fault while writing (disk full, file-size limit, I/O error,
    read-only filesystem), 2 for an output folder refused before training starts.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch CPU, CUDA (``device``'s), NumPy and Python RNG states, as tensors and plain data.

    NumPy's MT19937 state is ``{"key": int64 tensor (624,), "pos", "has_gauss", "gauss"}`` and
    Python's ``{"version", "state": int64 tensor (625,), "gauss"}``, so a checkpoint holding them
    loads with ``torch.load(weights_only=True)``.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what ``rng_state`` captured (the CUDA state only when both sides used CUDA).

    Also takes the tuples earlier releases stored (as ``gaheads upgrade-checkpoint`` converts them).
    """
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    npy = state["numpy"]
    if isinstance(npy, Mapping):
        npy = (npy["kind"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))
    py = state["python"]
    if isinstance(py, Mapping):
        py = (py["version"], tuple(py["state"].tolist()), py["gauss"])
    random.setstate((py[0], tuple(py[1]), py[2]))


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


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), NumPy and Python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _pause_for_tests(path: Path) -> None:
    pause = os.environ.get(SAVE_PAUSE_ENV)
    if pause:
        print(f"SAVE-PAUSE {path}", flush=True)
        sys.stdout.flush()
        time.sleep(float(pause))


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (temp file, fsync, rename), as weights-only data.

    A storage fault (disk full, file-size limit, I/O error, read-only filesystem, no permission)
    becomes a one-line CheckpointWriteError (exit code 4) naming the file and the free space left;
    the file previously at ``path`` is left as it was and the temp file removed.
    """
    path = Path(path)
    try:
        return atomic_save(dict(payload), path, "checkpoint", after_write=lambda: _pause_for_tests(path))
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
