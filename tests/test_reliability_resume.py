"""Issue 7, faults during training: kill -9 inside a checkpoint write, SIGTERM mid-epoch, exact resume.

Every run trains a 2-branch CCT-2 on 16 generated CIFAR-100-layout images (batch 4: 4 optimizer
steps per epoch, 2 epochs) with --deterministic on the CPU, logging the loss at every step. An
"uninterrupted" run is the reference; an interrupted-then-resumed run must reproduce its loss
at every step after the resume point, its per-epoch metrics and its final weights bit for bit.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from data_fixtures import make_cifar100
from fault_runner import KeepCheckpointAt

from gaheads.checkpoint import load_checkpoint
from gaheads.train import engine
from gaheads.train.cli import main as train_cli
from gaheads.train.config import parse_args

FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")
# compared exactly; timings and throughput are not
METRIC_KEYS = ("epoch", "loss", "task_loss", "decor_loss", "top1", "top5", "branch_top1_0", "branch_top1_1",
               "agreement", "model_top1", "model_top5", "eval_samples", "lr", "skipped_steps")


def flags(data: Path, out: Path, *extra: str) -> list[str]:
    return [str(data), "--dataset", "cifar100", "--model", "seqattn2_cct_2_3x2_32", "--epochs", "2", "-b", "4",
            "--workers", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "1", "--aug-repeats", "0",
            "--mixup", "0", "--cutmix", "0", "--deterministic", "--no-progress", "--log-interval", "1",
            "--output", str(out), *extra]


def train_keeping(argv: list[str], at_step: int) -> Path:
    """Train uninterrupted (also writing last.pth at step ``at_step``); keep that checkpoint as mid.pth."""
    out = Path(parse_args(argv).output)
    kept = out / "mid.pth"
    engine.train(parse_args([*argv, "--checkpoint-steps", str(at_step)]), callbacks=[KeepCheckpointAt(at_step, kept)])
    assert load_checkpoint(kept)["epoch_step"] > 0  # a mid-epoch checkpoint
    return kept


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_same_run(reference: Path, other: Path, from_step: int = 0) -> None:
    """Same loss at every step after ``from_step``, same per-epoch metrics, same final weights and EMA."""
    ref_steps = [r for r in read_csv(reference / "steps.csv") if int(r["step"]) > from_step]
    assert ref_steps and read_csv(other / "steps.csv")[-len(ref_steps):] == ref_steps
    a, b = read_csv(reference / "metrics.csv"), read_csv(other / "metrics.csv")
    assert [{k: r.get(k) for k in METRIC_KEYS} for r in a] == [{k: r.get(k) for k in METRIC_KEYS} for r in b]
    ca, cb = load_checkpoint(reference / "last.pth"), load_checkpoint(other / "last.pth")
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    for key in ("model", "ema"):
        if ca[key] is None:
            assert cb[key] is None
            continue
        assert ca[key].keys() == cb[key].keys()
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), f"{key}.{name}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_cifar100(root, n_train=16, n_test=8, n_classes=5)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, Path]:
    """The plain uninterrupted run and its mid-epoch-2 checkpoint (after optimizer step 6 of 8)."""
    out = tmp_path_factory.mktemp("reference")
    return out, train_keeping(flags(data, out), at_step=6)


CASES = {  # name: (extra flags, the step whose checkpoint is resumed)
    "grad-accumulation": (["--grad-accumulation", "2"], 3),  # 2 updates per epoch: step 3 is inside epoch 2
    "ema": (["--model-ema", "--model-ema-decay", "0.9"], 6),
    "mixup-cutmix": (["--mixup", "0.8", "--cutmix", "1.0"], 6),
}


def test_resume_mid_epoch_reproduces_the_run(reference, data, tmp_path):
    ref, mid = reference
    assert train_cli(flags(data, tmp_path, "--resume", str(mid))) == 0
    assert_same_run(ref, tmp_path, from_step=6)


@pytest.mark.parametrize("case", CASES)
def test_resume_mid_epoch_reproduces_the_run_with(case, data, tmp_path):
    extra, at_step = CASES[case]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    mid = train_keeping(flags(data, ref, *extra), at_step)
    assert train_cli(flags(data, resumed, *extra, "--resume", str(mid))) == 0
    assert_same_run(ref, resumed, from_step=at_step)
    if case == "ema":
        assert load_checkpoint(resumed / "last.pth")["ema"] is not None


# --------------------------------------------------------------------------- signals, in a real process
def start_training(argv: list[str], pause: float) -> subprocess.Popen:
    """gaheads train in its own process, pausing ``pause`` seconds inside each checkpoint write (fault_runner.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same float arithmetic as this process
    proc = subprocess.Popen([sys.executable, str(FAULT_RUNNER), "--pause-save", str(pause), "--", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(240, proc.kill)  # never hang the suite
    watchdog.daemon = True  # nor keep pytest alive once the process is gone
    watchdog.start()
    return proc


def save_pauses(proc: subprocess.Popen) -> Iterator[Path]:
    """The checkpoint paths the process announces as it pauses inside each write (before the rename)."""
    for line in proc.stdout:
        if line.startswith("SAVE-PAUSE "):
            yield Path(line.split(" ", 1)[1].strip())


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(reference, data, tmp_path):
    proc = start_training(flags(data, tmp_path), pause=2)
    pauses = save_pauses(proc)
    assert next(pauses) == tmp_path / "last.pth"  # end of epoch 1: let it finish
    assert next(pauses) == tmp_path / "last.pth"  # end of epoch 2: killed inside the write
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".last.pth.*.tmp"))) == 1  # the half-finished write was cut off
    previous = load_checkpoint(tmp_path / "last.pth")
    assert (previous["epoch"], previous["step"]) == (1, 4)  # epoch 1's checkpoint, intact
    assert load_checkpoint(tmp_path / "best.pth")["step"] == 4
    assert train_cli(flags(data, tmp_path, "--resume", str(tmp_path / "last.pth"))) == 0
    assert_same_run(reference[0], tmp_path)


def test_sigterm_mid_epoch_exits_143_then_resumes_to_the_same_weights(reference, data, tmp_path, capsys):
    proc = start_training(flags(data, tmp_path, "--checkpoint-steps", "2"), pause=1)
    assert next(save_pauses(proc)) == tmp_path / "last.pth"  # the step-2 checkpoint is being written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM == 143
    last = tmp_path / "last.pth"
    assert ("gaheads train: got SIGTERM; writing a resumable checkpoint at the next step (send it again to stop "
            "at once)") in err
    assert (f"gaheads train: stopped by SIGTERM at epoch 1, step 3; resumable checkpoint {last}; resume with the "
            f"same command plus --resume {last}") in err
    ck = load_checkpoint(last)
    assert (ck["epoch"], ck["step"], ck["epoch_step"]) == (0, 3, 3)  # mid-epoch: 3 of 4 steps
    assert train_cli(flags(data, tmp_path, "--checkpoint-steps", "2", "--resume", str(last))) == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_run(reference[0], tmp_path)  # steps 1-3 from the killed process, 4-8 from the resumed one


# --------------------------------------------------------------------------- DDP: 2 gloo ranks under torchrun
def torchrun(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ddp_resume_mid_epoch_reproduces_the_run(data, tmp_path):
    # 16 images over 2 ranks, batch 4 per rank: 2 steps per epoch; step 3 is the middle of epoch 2
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    torchrun("--no-python", sys.executable, str(FAULT_RUNNER), "--keep-mid", "3", "--",
             *flags(data, ref, "--checkpoint-steps", "3"))
    mid = load_checkpoint(ref / "mid.pth")
    assert (mid["step"], mid["epoch_step"], mid["loader"]["world_size"], len(mid["rng"]["ranks"])) == (3, 1, 2, 2)
    torchrun("-m", "gaheads.train", *flags(data, resumed, "--resume", str(ref / "mid.pth")))
    assert_same_run(ref, resumed, from_step=3)  # each rank restores its own partial-epoch loss sums
    assert load_checkpoint(resumed / "last.pth")["metrics"]["eval_samples"] == 8  # both ranks' shards
