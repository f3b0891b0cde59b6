"""One run per output folder: a lock file held while training, and the check for an earlier run's files.

``RunLock(folder).acquire()`` creates ``folder/train.lock`` holding this process's PID, host and
start time, and keeps an exclusive ``flock`` on it until ``release()`` (or until the process dies:
the kernel drops the lock with the process, so a ``kill -9`` leaves a file but no lock). A second
run into the folder gets ``RunFolderBusy`` naming the holder. A lock file that nobody holds any
more, left on this host, is stale: it is taken over and the takeover reported. A lock file from
another host is refused unless that host's process is known to be gone (a lock on a shared
filesystem cannot be checked from here), with the file to delete named.

``earlier_run_files(folder)`` lists what a finished or stopped run leaves behind (checkpoints,
released weights, metrics), so a new run never silently replaces them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: fall back to the PID check alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "train.lock"
# what a run leaves that another run must not replace unasked (steps.csv and curves.png alone are
# not a run: a run stopped before its first checkpoint leaves nothing to resume)
RUN_FILES = ("last.pth", "best.pth", "model.safetensors", "model.json", "summary.json", "metrics.csv")
RUN_PATTERNS = ("epoch-*.pth",)
# also removed by --overwrite, so no file of the earlier run stays beside the new run's
RUN_EXTRA_FILES = ("steps.csv", "curves.png")


class RunFolderBusy(RuntimeError):
    """Another live process holds the folder's lock; the message is one line naming it."""


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return False
    return True


def _describe(holder: dict[str, Any]) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    since = holder.get("started")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) \
        else ""
    return f"PID {pid} on host {host}{when}"


class RunLock:
    """The lock on one run folder (see the module docstring); ``acquire()`` once, ``release()`` once."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced, if any

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> RunLock:
        """Take the lock; RunFolderBusy when a live run holds it. ``took_over`` names a stale holder replaced."""
        for _ in range(5):  # retried only when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked, by_kernel = self._lock(fd)
                if not locked:
                    holder = self._read_when_written()
                    raise RunFolderBusy(f"output folder {self.folder} is in use by another training run "
                                        f"({_describe(holder)}); wait for it to end or choose another --output")
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)  # released and removed by its holder meanwhile: lock the new file
                    continue
                previous = self._read()
                self._check_previous(previous, by_kernel)
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps({"pid": os.getpid(), "host": _host(), "started": time.time()}) + "\n")
                         .encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self.took_over = previous or None
            return self
        raise RunFolderBusy(f"output folder {self.folder}: its {LOCK_NAME} keeps being replaced by another process")

    @staticmethod
    def _lock(fd: int) -> tuple[bool, bool]:
        """(locked, whether the kernel holds the lock for us: then a lock file we could lock is stale)."""
        if fcntl is None:
            return True, False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False, True
        except OSError:  # a filesystem without flock: the PID check alone decides
            return True, False
        return True, True

    def _read_when_written(self) -> dict[str, Any]:
        # the holder writes its PID right after locking: give it a moment
        for _ in range(20):
            holder = self._read()
            if holder:
                return holder
            time.sleep(0.01)
        return {}

    def _check_previous(self, previous: dict[str, Any], by_kernel: bool) -> None:
        """Refuse a lock file whose writer may still run; leave a stale one to be taken over."""
        if not previous:
            return
        pid, host = previous.get("pid"), previous.get("host")
        if host != _host():
            # flock over a network filesystem is not to be relied on: the other host's run may be alive
            raise RunFolderBusy(f"output folder {self.folder} is locked by {_describe(previous)}; if that run "
                                f"has ended, delete {self.path} and start again")
        # with the kernel's lock ours, its writer is gone (a live one would still hold it)
        if not by_kernel and isinstance(pid, int) and _pid_alive(pid):
            raise RunFolderBusy(f"output folder {self.folder} is in use by another training run "
                                f"({_describe(previous)}); wait for it to end or choose another --output")

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first: a waiter then locks a fresh file)."""
        if self._fd is None:
            return
        try:
            if self._read().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the folder went away or turned read-only: the kernel still drops the lock below
        finally:
            os.close(self._fd)
            self._fd = None


def earlier_run_files(folder: str | os.PathLike) -> list[str]:
    """Names of the files in ``folder`` that a finished or stopped training run leaves (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = {name for name in RUN_FILES if (folder / name).is_file()}
    for pattern in RUN_PATTERNS:
        found.update(p.name for p in folder.glob(pattern) if p.is_file())
    return sorted(found)


def remove_earlier_run(folder: str | os.PathLike) -> list[str]:
    """Delete an earlier run's files from ``folder`` (only those a run writes); the names removed."""
    folder = Path(folder)
    names = earlier_run_files(folder) + [n for n in RUN_EXTRA_FILES if (folder / n).is_file()]
    for name in names:
        (folder / name).unlink(missing_ok=True)
    return sorted(names)
