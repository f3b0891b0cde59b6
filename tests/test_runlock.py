"""One run per output folder: the lock held while training, stale locks, and an earlier run's files.

The folder tests use real processes: a training process paused inside its evaluation (through the
trainer's callbacks, see test_stop_request.HOOKED) holds the folder while a second ``gaheads train``
process tries it; a SIGKILLed one leaves a stale lock that the next run takes over.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_stop_request import start_hooked, tiny_flags, wait_for

from gaheads.train.config import parse_args
from gaheads.train.engine import train
from gaheads.train.runlock import LOCK_NAME, RunFolderBusy, RunLock

HOST = socket.gethostname()


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def dead_pid() -> int:
    """The PID of a process that has ended (a real one, reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def cli(*argv: str) -> subprocess.CompletedProcess:
    """The real ``gaheads train`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "gaheads.train", *argv], capture_output=True, text=True, timeout=240)


def test_a_held_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    first = RunLock(tmp_path).acquire()
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert (holder["pid"], holder["host"]) == (os.getpid(), HOST)
    with pytest.raises(RunFolderBusy) as busy:
        RunLock(tmp_path).acquire()  # another open file: the kernel's lock refuses it even in this process
    message = str(busy.value)
    assert message.startswith(f"output folder {tmp_path} is in use by another training run (PID {os.getpid()} on "
                              f"host {HOST}, since ")
    assert message.endswith("); wait for it to end or choose another --output")
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    again = RunLock(tmp_path).acquire()
    assert again.took_over is None  # a released lock leaves nothing stale
    again.release()


def test_a_dead_process_lock_is_taken_over_and_another_hosts_is_refused(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": HOST, "started": 0}))
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over == {"pid": pid, "host": HOST, "started": 0}
    lock.release()

    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": 0}))
    with pytest.raises(RunFolderBusy) as busy:
        RunLock(tmp_path).acquire()
    assert str(busy.value).startswith(f"output folder {tmp_path} is locked by PID 1 on host elsewhere.example, since ")
    assert str(busy.value).endswith(f"; if that run has ended, delete {tmp_path / LOCK_NAME} and start again")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_fixtures import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("data"), classes=("cat", "dog"), per_class=8)


def test_second_run_into_a_finished_or_a_running_runs_folder_is_refused_and_changes_nothing(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(parse_args(tiny_flags(data, run, "--epochs", "1")))  # a finished run
    finished = hashes(run)

    new = cli(*tiny_flags(data, run, "--epochs", "1"))  # a new run into it, without --resume / --overwrite
    assert new.returncode == 2
    assert new.stderr == (f"gaheads train: output folder {run} already holds another training run (best.pth, "
                          f"last.pth, metrics.csv, model.json, +2 more); continue it with --resume {run}, replace it "
                          "with --overwrite, or choose another --output\n")
    assert hashes(run) == finished

    # a live run into the folder: resumed for a second epoch, paused inside that epoch's evaluation
    release = tmp_path / "release"
    holder = start_hooked("hold-val", str(release), ["--resume", str(run), "--epochs", "2"])
    wait_for(holder, "VAL 2 0")
    running = hashes(run)
    assert LOCK_NAME in running
    busy = cli(*tiny_flags(data, run, "--epochs", "1", "--overwrite"))  # not even --overwrite takes a live run's folder
    assert busy.returncode == 2
    line = busy.stderr
    assert line.startswith(f"gaheads train: output folder {run} is in use by another training run (PID {holder.pid} "
                           f"on host {HOST}, since ") and line.endswith(
        "); wait for it to end or choose another --output\n") and line.count("\n") == 1
    assert hashes(run) == running  # the holder's files, lock included, untouched

    holder.kill()  # dies holding the lock: its train.lock stays, the kernel's lock goes with it
    holder.communicate(timeout=60)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    capsys.readouterr()
    summary = train(parse_args(["--resume", str(run), "--epochs", "2"]))
    out = capsys.readouterr().out
    assert (f"gaheads train: {run} had a stale {LOCK_NAME} of PID {holder.pid} on host {HOST}, a run that ended "
            "without removing it; taking it over") in out
    assert "gaheads train: resuming with changed settings: --epochs 2 (was 1)" in out
    assert summary["epochs"] == 2 and not (run / LOCK_NAME).exists()

    train(parse_args(tiny_flags(data, run, "--epochs", "1", "--overwrite")))
    assert (f"gaheads train: --overwrite: removed the earlier run's files from {run} (best.pth, curves.png, "
            "last.pth, metrics.csv, model.json, model.safetensors, steps.csv, summary.json)") in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def test_a_run_stopped_by_sigterm_releases_its_lock(data, tmp_path):
    run = tmp_path / "run"
    proc = start_hooked("slow-val", "2", tiny_flags(data, run, "--epochs", "1"))
    wait_for(proc, "VAL 1 0")
    assert (run / LOCK_NAME).is_file()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=100)
    assert proc.returncode == 143 and not (run / LOCK_NAME).exists() and (run / "last.pth").is_file()
