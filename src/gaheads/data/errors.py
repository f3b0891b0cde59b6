"""The data package's error and warning types."""

from __future__ import annotations

_WORKER_PREFIX = "Caught DataError in DataLoader worker"


class DataError(ValueError):
    """A data problem the user can fix (missing folder, bad layout, unreadable file); one line naming it.

    Raised inside a DataLoader worker, torch re-raises the exception in the main process with
    ``DataError("Caught DataError in DataLoader worker ...\\nOriginal Traceback ...")``; the
    constructor recovers the original one-line message from that text so a CLI can still
    print one line.
    """

    def __init__(self, message: str = "") -> None:
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX):
            last = message.rstrip().splitlines()[-1]
            _, sep, original = last.partition("DataError: ")
            if sep:
                message = original
        super().__init__(message)


class BadImageWarning(UserWarning):
    """An image file could not be decoded and was replaced by another sample."""


class LinkLoopWarning(UserWarning):
    """Symlinked folders inside an ImageFolder were left out because they lead to a folder already scanned."""
