"""How training stops on its own terms: signals, non-finite losses, and the errors that carry the exit status.

- SIGTERM / SIGINT are recorded by ``StopRequest``; what happens depends on the trainer's phase:
  during start-up the run stops at once (nothing written yet); while training, the loop acts at
  the next optimizer-step boundary (all DDP ranks agree on the step); during evaluation it leaves
  the evaluation at the next batch (a checkpoint being written is finished first: writes are
  atomic). Each then writes or keeps a resumable ``last.pth`` and raises ``TrainingInterrupted`` (exit status 128 +
  signal number). After the last epoch's evaluation the run finishes instead (the final weights
  take seconds). A second signal stops at once.
- A non-finite loss raises ``NonFiniteLossError`` (exit status 3) once more than
  ``--skip-nonfinite`` optimizer steps have had one.

Tests make a loss non-finite through a ``TrainerCallback.on_loss`` hook passed to ``engine.train``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .config import PROG

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NonFiniteLossError(RuntimeError):
    """The loss was NaN/inf more often than --skip-nonfinite allows; exit status 3."""

    exit_code = 3


class TrainingInterrupted(KeyboardInterrupt):
    """Stopped by a signal after writing a resumable checkpoint; exit status 128 + signum.

    A KeyboardInterrupt, so ``except Exception`` around a run (multi-train) does not swallow it.
    """

    def __init__(self, signum: int, checkpoint: Path | None, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# what the trainer is doing, as StopRequest.phase: how a first signal is acted on
STARTUP, TRAINING, EVALUATING, FINISHING = "start-up", "training", "evaluating", "finishing"
_ANNOUNCE = {
    TRAINING: "writing a resumable checkpoint at the next step",
    EVALUATING: "leaving the evaluation and writing a resumable checkpoint",
    FINISHING: "the last epoch is done: writing the final weights, then stopping",
}


class StopRequest:
    """Remembers the first SIGTERM/SIGINT so the loop can stop cleanly; a second one aborts at once.

    ``phase`` (set by the trainer) says what a first signal means: in ``STARTUP`` nothing is
    resumable yet, so the handler raises ``TrainingInterrupted`` at once (its message ends with
    ``startup_note``); in the other phases it is only recorded, for the loop to act on.

    ``install()`` only works in the main thread (Python's rule for signal handlers); elsewhere
    the handlers stay as they were and signals behave as usual. DataLoader workers forked after
    ``install()`` inherit the handler; there it does nothing, so a SIGINT/SIGTERM sent to the
    whole process group (Ctrl-C, a batch scheduler) does not kill the workers mid-epoch.
    """

    def __init__(self, announce: bool = True) -> None:
        self.signum = 0
        self.announce = announce
        self.pid = os.getpid()
        self.phase = TRAINING  # the trainer sets STARTUP while it builds the run
        self.startup_note = "; nothing was written"
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker: the trainer process decides
            return
        if self.signum:
            self.restore()
            raise KeyboardInterrupt(f"second {signal_name(signum)}: stopped without saving")
        self.signum = signum
        if self.phase == STARTUP:
            raise TrainingInterrupted(signum, None, f"stopped by {signal_name(signum)} during start-up, before the "
                                                    f"first training step{self.startup_note}")
        if self.announce:
            print(f"{PROG}: got {signal_name(signum)}; {_ANNOUNCE.get(self.phase, _ANNOUNCE[TRAINING])} "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)


def describe_indices(indices: list[int], limit: int = 16) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return f"[{shown}{f', ... (+{len(indices) - limit} more)' if len(indices) > limit else ''}]"
