"""Random-number state of a training process: seeding, and capturing / restoring every generator for exact resume."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), NumPy and Python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


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


def rank_rng(rng: Mapping[str, Any] | None, rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's states from a checkpoint's ``rng`` entry; None when the world size changed.

    ``rng`` holds rank 0's states at its top level (what single-process checkpoints always had)
    and every rank's under ``"ranks"``.
    """
    rng = rng or {}
    ranks = rng.get("ranks")
    if ranks and len(ranks) == world_size:
        return ranks[rank]
    return dict(rng) if world_size == 1 and "torch" in rng else None
