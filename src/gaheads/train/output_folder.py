"""A run's output folder: chosen from the flags, checked writable, locked, and refused when it holds another run."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import distributed as dist_utils
from .checkpointing import CheckpointWriteError
from .config import PROG, ConfigError
from .runlock import LOCK_NAME, RunFolderBusy, RunLock, earlier_run_files, remove_earlier_run


class OutputFolder:
    """``open()`` picks ``--output`` (or the resumed checkpoint's folder, or runs/<dataset>-<model>-<time>),
    and on rank 0 makes it, checks it is writable and locks it; ``close()`` lets go (and removes
    the folder when this run created it and left it empty)."""

    def __init__(self, args: argparse.Namespace, main: bool, log: Callable[[str], None]) -> None:
        self.args, self.main, self.log = args, main, log
        self.lock: RunLock | None = None
        self._created: Path | None = None

    def open(self) -> Path:
        """The folder, the same on every rank; CheckpointWriteError when not writable, ConfigError when refused."""
        args = self.args
        if args.output:
            out = Path(args.output)
        elif args.resume:
            out = Path(args.resume).parent
        else:
            out = Path("runs") / f"{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        problem = claim = None
        if self.main:
            problem = self._make(out)
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

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self._created is not None:
            with contextlib.suppress(OSError):  # not empty (or gone): kept as it is
                self._created.rmdir()
            self._created = None

    def _make(self, out: Path) -> str | None:
        try:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            if created:
                self._created = out
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
                pass
        except OSError as e:
            return f"output folder {out} is not writable ({e.strerror or e})"
        return None

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
