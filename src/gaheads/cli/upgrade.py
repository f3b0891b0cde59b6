"""``gaheads upgrade-checkpoint OLD --trust --output NEW``: re-save a trusted old checkpoint in the safe format.

Checkpoint files are read with ``torch.load(weights_only=True)``: tensors and plain containers
only, so opening a file never runs code from it. Earlier releases pickled the NumPy RNG state
(NumPy arrays) into every checkpoint, which such a load refuses. With ``--trust`` this command reads such a
file with torch's restricted loader extended by exactly those types (NumPy arrays and scalars,
paths, argparse namespaces; nothing else, so no code in the file runs), turns them into tensors
and plain data, writes NEW
atomically and checks that NEW loads the safe way. A file that already loads safely is re-saved
without needing ``--trust``.

Exit status: 0 converted; 2 refused or unreadable (one line on stderr); 4 NEW could not be
written (disk full, ...).
"""

from __future__ import annotations

import argparse
import pathlib
from pathlib import Path
from typing import Any

from . import failed

# torch and the checkpoint module load inside the functions, so that --help answers at once

PROG = "gaheads upgrade-checkpoint"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Re-save a trusted checkpoint of an earlier release so that "
                                "it loads without running code (tensors and plain data only).")
    p.add_argument("old", metavar="OLD", help="the checkpoint to convert (.pth)")
    p.add_argument("--output", required=True, metavar="NEW", help="where to write the converted checkpoint")
    p.add_argument("--trust", action="store_true",
                   help="convert OLD, rebuilding its NumPy arrays, paths and namespaces (no code in it runs)")
    return p


def read_trusted(path: Path) -> dict[str, Any]:
    """Read ``path`` as written by an earlier release: tensors, plain data, NumPy arrays and scalars,
    paths and argparse namespaces.

    Still torch's restricted loader (``weights_only=True``), with only those types added to what it
    may rebuild: nothing in the file can run code, and a file holding anything else is refused.
    """
    import numpy as np
    import torch

    from ..checkpoint import FORMAT, CheckpointError

    rebuildable = [np.empty(0).__reduce__()[0], np.float64(0).__reduce__()[0], np.ndarray, np.dtype,
                   *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}, argparse.Namespace, pathlib.PosixPath,
                   pathlib.PurePosixPath]
    try:
        with torch.serialization.safe_globals(rebuildable):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a gaheads checkpoint (expected format {FORMAT!r})")
    return ckpt


def upgrade(old: str | Path, new: str | Path, trust: bool) -> bool:
    """Write ``new``: ``old`` as tensors and plain data; True when ``old`` needed converting.

    Raises CheckpointError (one line) when ``old`` needs unpickling and ``trust`` is False, or
    holds an object with no plain form; StorageError when ``new`` cannot be written.
    """
    from ..checkpoint import CheckpointError, UnsafeCheckpointError, atomic_save, load_checkpoint, plain_data

    old, new = Path(old), Path(new)
    if not old.is_file():
        raise CheckpointError(f"no checkpoint at {old}")
    try:
        ckpt, converted = load_checkpoint(old), False
    except UnsafeCheckpointError:
        if not trust:
            raise CheckpointError(f"{old} holds pickled Python objects; pass --trust to convert it (only NumPy "
                                  "arrays, paths and namespaces are rebuilt: no code in the file runs)") from None
        ckpt, converted = read_trusted(old), True
    try:
        data = plain_data(ckpt, "checkpoint")
    except TypeError as e:
        raise CheckpointError(f"{old}: {e}") from e
    atomic_save(data, new)
    load_checkpoint(new)  # the promise: NEW opens the safe way
    return converted


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError

    try:
        converted = upgrade(args.old, args.output, args.trust)
    except (CheckpointError, OSError) as e:  # OSError: StorageError too (exit 4)
        return failed(PROG, e)
    note = "converted to tensors and plain data" if converted else "already in the safe format; re-saved"
    print(f"wrote {args.output} ({note}; it loads with torch.load(weights_only=True))")
    return 0
