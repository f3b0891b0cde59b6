"""Fault-injection callbacks for the training tests, and a runner for the tests that need their own process.

In-process tests pass these ``TrainerCallback``s to ``engine.train`` or ``cli.main``. A test that
must kill or signal a real process runs

    python tests/fault_runner.py [--pause-save SECONDS] [--keep-mid STEP] -- <gaheads train flags>

which trains through ``gaheads.train.cli.main`` (same exit statuses and messages as the command)
with the callbacks those options build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from gaheads.train.engine import TrainerCallback


class NonFiniteLossAt(TrainerCallback):
    """Makes the loss of the first micro-batch non-finite at the given optimizer steps (1-based, across resumes)."""

    def __init__(self, *steps: int) -> None:
        self.steps = frozenset(steps)

    def on_loss(self, trainer, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if micro == 0 and step in self.steps else loss


class SignalAtStep(TrainerCallback):
    """Sends this process ``signum`` once optimizer step ``step`` is done; the run stops at the next step."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_step_end(self, trainer, result) -> None:
        if trainer.state.step == self.step:
            os.kill(os.getpid(), self.signum)


class SignalAfterEpoch(TrainerCallback):
    """Sends this process ``signum`` once epoch ``epoch`` (1-based) is checkpointed and logged."""

    def __init__(self, epoch: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.signum = epoch, signum

    def on_epoch_end(self, trainer, row) -> None:
        if row["epoch"] == self.epoch:
            os.kill(os.getpid(), self.signum)


class KeepCheckpointAt(TrainerCallback):
    """Copies last.pth to ``dst`` (default: mid.pth beside it) once the checkpoint of step ``step`` is in
    place; ``mid_epoch``: only a checkpoint written inside an epoch."""

    def __init__(self, step: int, dst: Path | None = None, mid_epoch: bool = False) -> None:
        self.step, self.dst, self.mid_epoch = step, dst, mid_epoch

    def on_checkpoint_saved(self, trainer, path: Path) -> None:
        st = trainer.state
        if trainer.main and st.step == self.step and (st.epoch_step or not self.mid_epoch):
            shutil.copyfile(path, self.dst or path.with_name("mid.pth"))


class PauseBeforeRename(TrainerCallback):
    """Prints ``SAVE-PAUSE <final path>`` and sleeps ``seconds`` once a checkpoint's temp file is complete,
    before its rename: a test can kill the process inside the save window."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_checkpoint_written(self, trainer, tmp: Path, path: Path) -> None:
        print(f"SAVE-PAUSE {path}", flush=True)
        time.sleep(self.seconds)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fault_runner.py")
    p.add_argument("--pause-save", type=float, default=None, metavar="SECONDS")
    p.add_argument("--keep-mid", type=int, default=None, metavar="STEP",
                   help="copy the mid-epoch checkpoint of STEP to mid.pth")
    split = argv.index("--") if "--" in argv else len(argv)
    opts, train_argv = p.parse_args(argv[:split]), argv[split + 1:]
    callbacks: list[TrainerCallback] = []
    if opts.pause_save is not None:
        callbacks.append(PauseBeforeRename(opts.pause_save))
    if opts.keep_mid is not None:
        callbacks.append(KeepCheckpointAt(opts.keep_mid, mid_epoch=True))
    from gaheads.train.cli import main as train_main

    return train_main(train_argv, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
