"""``gaheads train`` / ``python -m gaheads.train`` / ``train.py``: parse flags, train, map failures to exit statuses.

Exit status: 0 done; 2 bad input (one line ``gaheads train: ...`` on stderr); 3 stopped on a
non-finite loss; 4 an output file could not be written (disk full, file-size limit, I/O error,
read-only filesystem: one line naming the file and the free space; the previous checkpoint is
intact); 128 + signal number (143 SIGTERM, 130 SIGINT) after writing a resumable checkpoint on a
signal.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .config import PROG  # argparse and yaml only: --help answers without torch


def _say(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank fails the same way; say it once
        print(f"{PROG}: {' '.join(msg.split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, callbacks: list[Any] | None = None) -> int:
    """Run ``gaheads train`` with ``argv``; the exit status. ``callbacks``: ``engine.TrainerCallback`` hooks (tests)."""
    from .config import ConfigError, parse_args

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except ConfigError as e:
        _say(str(e))
        return 2
    except SystemExit as e:  # -h/--help
        return int(e.code or 0)

    from ..threads import apply_threads

    apply_threads(args.threads)  # process-wide, so set by the command only, never by library code
    if args.max_image_pixels is not None:
        from ..preprocess import set_pil_pixel_limit

        set_pil_pixel_limit(args.max_image_pixels)  # process-wide too: PIL's own guard must pass the same images
    tune_cpu_allocator(args.device)

    from ..checkpoint import CheckpointError, StorageError
    from ..data import DataError
    from ..models.factory import UnknownModelError
    from .checkpointing import CheckpointWriteError
    from .engine import train
    from .faults import NonFiniteLossError, TrainingInterrupted

    try:
        train(args, callbacks)
    except TrainingInterrupted as e:
        _say(str(e))
        return e.exit_code
    except NonFiniteLossError as e:
        _say(str(e))
        return NonFiniteLossError.exit_code
    except (ConfigError, DataError, UnknownModelError, CheckpointError, CheckpointWriteError, StorageError) as e:
        _say(str(e))
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        _say("interrupted (no checkpoint written for the current step)")
        return 130
    return 0


def tune_cpu_allocator(device: str | None) -> None:
    """On a CPU run (``--device cpu``, or no CUDA), make glibc's malloc keep freed memory: process-wide,
    so a command entry's choice; it spares the page faults of re-allocated activations every step."""
    if device:
        on_cpu = str(device).split(":")[0] == "cpu"
    else:
        import torch

        on_cpu = not torch.cuda.is_available()
    if on_cpu:
        from ..cpu_memory import keep_freed_memory

        keep_freed_memory()


if __name__ == "__main__":
    sys.exit(main())
