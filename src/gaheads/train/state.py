"""Training-state persistence: RNG states, atomic checkpoint writes, keeping extra copies.

Test hooks (environment variables, for fault-injection tests only):

- ``GAHEADS_TEST_SAVE_PAUSE=SECONDS``: after a checkpoint's temp file is completely written and
  closed, and before it is renamed into place, print ``SAVE-PAUSE <final path>`` to stdout
  (flushed) and sleep that long — a test can SIGKILL the process inside the save window and
  check that the previous checkpoint survives.
"""

from __future__ import annotations

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

from ..checkpoint import atomic_write

SAVE_PAUSE_ENV = "GAHEADS_TEST_SAVE_PAUSE"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (folder not writable, disk full); the previous one is intact."""


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch CPU, CUDA (``device``'s), NumPy and Python RNG states."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what ``rng_state`` captured (the CUDA state only when both sides used CUDA)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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
    """``torch.save`` ``payload`` to ``path`` atomically (temp file, fsync, rename).

    An OSError (no permission, disk full) becomes a one-line CheckpointWriteError; the file
    previously at ``path`` is left as it was.
    """
    path = Path(path)

    def write(tmp: str) -> None:
        torch.save(dict(payload), tmp)
        _pause_for_tests(path)

    try:
        return atomic_write(path, write)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}"
                                   f"{' (the previous checkpoint is intact)' if path.exists() else ''}") from e


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
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(f"cannot write checkpoint {dst}: {e.strerror or e}") from e
    return dst
