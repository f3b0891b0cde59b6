"""gaheads.train.faults.StopRequest: the first SIGTERM/SIGINT asks for a clean stop, a second one aborts at once."""

import os
import signal

import pytest

from gaheads.train.faults import StopRequest


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)])
def test_second_signal_stops_at_once_without_saving(first, second, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), first)  # the handler runs before os.kill returns to the next bytecode
        assert stop.signum == first  # remembered: the loop saves at the next step boundary
        assert "writing a resumable checkpoint at the next step (send it again to stop at once)" in \
            capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt, match=f"second {signal.Signals(second).name}: stopped without saving"):
            os.kill(os.getpid(), second)
        # the second signal put the previous handlers back, so a third one acts as it did before training
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        stop.restore()
        for s, h in before.items():
            signal.signal(s, h)


def test_during_start_up_the_first_signal_stops_at_once():
    from gaheads.train.faults import STARTUP, TrainingInterrupted

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = StopRequest().install()
    stop.phase = STARTUP
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
        assert str(stopped.value) == "stopped by SIGINT during start-up, before the first training step; nothing " \
                                     "was written"
        assert (stopped.value.exit_code, stopped.value.checkpoint) == (130, None)
    finally:
        stop.restore()
        for s, h in before.items():
            signal.signal(s, h)


def test_during_evaluation_the_announcement_says_the_evaluation_is_left(capsys):
    from gaheads.train.faults import EVALUATING

    stop = StopRequest().install()
    stop.phase = EVALUATING
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        assert capsys.readouterr().err == ("gaheads train: got SIGTERM; leaving the evaluation and writing a resumable "
                                           "checkpoint (send it again to stop at once)\n")
    finally:
        stop.restore()


# --------------------------------------------------------------------------- real signals to a real training process
# A training process whose evaluation or start-up a test makes slow through the trainer's callbacks
# (gaheads.train.engine.TrainerCallback): argv = MODE ARG <gaheads train flags>.
#   slow-val SECONDS:   every evaluation batch takes SECONDS longer
#   slow-startup SECONDS: start-up sleeps SECONDS once the datasets are built
#   hold-val FILE:      the first evaluation batch waits until FILE exists
HOOKED = r"""
import sys, time
from pathlib import Path
from gaheads.train.config import parse_args
from gaheads.train.engine import TrainerCallback, train
from gaheads.train.faults import TrainingInterrupted

mode, arg, argv = sys.argv[1], sys.argv[2], sys.argv[3:]


class Hook(TrainerCallback):
    def on_startup(self, trainer, stage):
        print("STARTUP", stage, flush=True)
        if mode == "slow-startup" and stage == "data":
            time.sleep(float(arg))

    def on_val_batch(self, trainer, index):
        print("VAL", trainer.state.epoch + 1, index, flush=True)
        if mode == "slow-val":
            time.sleep(float(arg))
        while mode == "hold-val" and not Path(arg).exists():
            time.sleep(0.05)


try:
    train(parse_args(argv), callbacks=[Hook()])
except TrainingInterrupted as e:
    # when the run let go (CLOCK_MONOTONIC, shared by all processes): interpreter teardown after
    # this is the same for every exit and takes many seconds on a loaded machine
    print("STOPPED", time.monotonic(), flush=True)
    print(f"gaheads train: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
"""


def tiny_flags(data, out, *extra: str) -> list[str]:
    """2 epochs of CCT-2 on 16 + 16 images, batch 4: 4 optimizer steps and 4 evaluation batches per epoch."""
    return [str(data), "--model", "cct_2_3x2_32", "--epochs", "2", "-b", "4", "-j", "0", "--opt", "adamw",
            "--lr", "1e-3", "--warmup-epochs", "1", "--aug-repeats", "0", "--mixup", "0", "--cutmix", "0",
            "--aa", "none", "--deterministic", "--no-progress", "--log-interval", "1", "--output", str(out), *extra]


def start_hooked(mode: str, arg: str, argv: list[str]):
    """The HOOKED training process, with this process's thread count (the same float arithmetic)."""
    import subprocess
    import sys
    import threading

    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", HOOKED, mode, arg, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(240, proc.kill)  # never hang the suite
    watchdog.daemon = True
    watchdog.start()
    return proc


def stopped_at(stdout: str) -> float:
    return float(next(line for line in stdout.splitlines() if line.startswith("STOPPED ")).split()[1])


def wait_for(proc, line: str) -> list[str]:
    """The process's stdout lines up to and including ``line``."""
    seen = []
    for got in proc.stdout:
        seen.append(got.rstrip("\n"))
        if seen[-1] == line:
            return seen
    raise AssertionError(f"{line!r} never printed; stdout {seen}; stderr {proc.stderr.read()[-2000:]}")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from data_fixtures import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("tiny"), classes=("cat", "dog"), per_class=8)


def test_sigterm_during_start_up_stops_at_once_and_writes_nothing(tiny_data, tmp_path):
    import time

    run = tmp_path / "run"
    proc = start_hooked("slow-startup", "120", tiny_flags(tiny_data, run))
    wait_for(proc, "STARTUP data")  # building the run: the hook holds it here for two minutes
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=100)
    assert proc.returncode == 143
    assert err.splitlines()[-1] == ("gaheads train: stopped by SIGTERM during start-up, before the first training "
                                    "step; nothing was written")
    assert stopped_at(out) - sent < 3  # at once, not after the two minutes the start-up still had to go
    assert not run.exists()  # the folder it created (and its lock) are gone: nothing half-written


def test_sigterm_during_validation_stops_at_the_next_batch_then_resume_dir_alone_finishes_the_run(tiny_data, tmp_path):
    import csv
    import time

    import torch

    from gaheads.checkpoint import load_checkpoint
    from gaheads.train.config import parse_args
    from gaheads.train.engine import train

    ref, run = tmp_path / "ref", tmp_path / "run"
    train(parse_args(tiny_flags(tiny_data, ref)))  # the uninterrupted run
    # every evaluation batch takes 3 s longer: the epoch-1 evaluation would take 12 s more
    proc = start_hooked("slow-val", "3", tiny_flags(tiny_data, run))
    wait_for(proc, "VAL 1 0")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert "VAL 1 1" not in out  # it left the evaluation at the next batch (not 9 s later) ...
    assert stopped_at(out) - sent < 3 + 5  # ... once the 3-s batch was done and the checkpoint written
    last = run / "last.pth"
    assert ("gaheads train: got SIGTERM; leaving the evaluation and writing a resumable checkpoint (send it again "
            "to stop at once)") in err
    assert err.splitlines()[-1] == (
        f"gaheads train: stopped by SIGTERM at epoch 1, step 4, before its evaluation ended; resumable checkpoint "
        f"{last}; resume with the same command plus --resume {last} (or gaheads train --resume {run} alone), which "
        "evaluates epoch 1, then continues at epoch 2, step 5")
    ck = load_checkpoint(last)
    assert (ck["epoch"], ck["step"], ck["epoch_step"], ck["history"]) == (0, 4, 4, [])  # steps done, not evaluated

    summary = train(parse_args(["--resume", str(run)]))  # no data root, no flags: all from the checkpoint
    assert summary["epochs"] == 2 and summary["steps"] == 8
    with open(ref / "metrics.csv") as a, open(run / "metrics.csv") as b:
        keys = ("epoch", "loss", "task_loss", "top1", "top5", "eval_samples", "lr")
        assert [[r[k] for k in keys] for r in csv.DictReader(a)] == [[r[k] for k in keys] for r in csv.DictReader(b)]
    wa, wb = load_checkpoint(ref / "last.pth")["model"], load_checkpoint(last)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
