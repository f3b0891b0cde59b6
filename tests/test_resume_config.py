"""Resume without retyping: the checkpoint records the run's resolved flags, ``--resume DIR`` alone continues it.

A 2-epoch CCT-2 run on 16 + 16 generated images is the reference; runs stopped after epoch 1 and
resumed from their folder alone must end with the reference's metrics and weights exactly.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from fault_runner import SignalAfterEpoch
from test_stop_request import tiny_flags

from gaheads.checkpoint import load_checkpoint
from gaheads.train.checkpointing import config_record
from gaheads.train.cli import main
from gaheads.train.config import ConfigError, describe_changes, parse_args
from gaheads.train.engine import train
from gaheads.train.faults import TrainingInterrupted

PLAIN = (str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_fixtures import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("data"), classes=("cat", "dog"), per_class=8)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    train(parse_args(tiny_flags(data, out)))
    return out


def rows(path: Path) -> list[dict[str, str]]:
    keys = ("epoch", "loss", "task_loss", "top1", "top5", "eval_samples", "lr")
    with open(path) as f:
        return [{k: r[k] for k in keys} for r in csv.DictReader(f)]


def test_the_checkpoint_records_every_resolved_flag_as_plain_data(data, reference):
    raw = torch.load(reference / "last.pth", weights_only=True)  # no pickled objects needed
    recorded = raw["args"]

    def plain(v) -> bool:
        return isinstance(v, PLAIN) or (isinstance(v, list) and all(plain(x) for x in v))

    assert all(isinstance(k, str) and plain(v) for k, v in recorded.items())
    assert recorded == config_record(parse_args(tiny_flags(data, reference)))
    assert recorded["scale"] == [0.08, 1.0] and recorded["data_dir"] == str(data) and recorded["aa"] is None
    assert raw["cwd"] == os.getcwd()


def test_stopped_after_an_epoch_says_where_the_resume_starts_and_resume_dir_alone_ends_the_same(
        data, reference, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:  # after epoch 1's checkpoint: stops before epoch 2
        train(parse_args(tiny_flags(data, run)), callbacks=[SignalAfterEpoch(1, signal.SIGTERM)])
    last = run / "last.pth"
    assert str(stopped.value) == (
        f"stopped by SIGTERM after epoch 1, step 4; resumable checkpoint {last}; resume with the same command plus "
        f"--resume {last} (or gaheads train --resume {run} alone), which continues at epoch 2, step 5")
    summary = train(parse_args(["--resume", str(run)]))
    assert summary["epochs"] == 2 and summary["steps"] == 8
    assert rows(reference / "metrics.csv") == rows(run / "metrics.csv")
    a, b = load_checkpoint(reference / "last.pth")["model"], load_checkpoint(last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flags_given_with_resume_override_and_are_reported_in_one_line(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    capsys.readouterr()
    summary = train(parse_args(["--resume", str(run), "--epochs", "3", "--lr", "5e-4"]))
    out = capsys.readouterr().out
    changed = [line for line in out.splitlines() if "changed settings" in line]
    assert changed == ["gaheads train: resuming with changed settings: --epochs 3 (was 2), --lr 0.0005 (was 0.001)"]
    assert summary["epochs"] == 3
    recorded = load_checkpoint(run / "last.pth")["args"]
    assert (recorded["epochs"], recorded["lr"], recorded["model"]) == (3, 5e-4, "cct_2_3x2_32")


def test_a_moved_data_root_is_named_and_can_be_given(data, tmp_path):
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    run = tmp_path / "run"
    args = parse_args(tiny_flags(moved, run, "--epochs", "1"))
    train(args)
    moved.rename(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as gone:
        parse_args(["--resume", str(run)])
    assert str(gone.value) == (f"--resume {run}: the run's data root {moved} does not exist any more; give its new "
                               f"place: gaheads train NEW_ROOT --resume {run}")
    again = parse_args([str(tmp_path / "elsewhere"), "--resume", str(run)])
    assert again.data_dir == str(tmp_path / "elsewhere") and again.model == "cct_2_3x2_32" and again.batch_size == 4
    assert describe_changes(config_record(args), again) == f"DATA {tmp_path / 'elsewhere'} (was {moved})"


def test_resume_with_another_model_names_the_checkpoints_model(data, reference, tmp_path, capsys):
    threads = str(torch.get_num_threads())  # the CLI sets torch's threads: keep this process's
    argv = ["--resume", str(reference), "--model", "seqattn2_cct_2_3x2_32", "--output", str(tmp_path / "o"),
            "--threads", threads]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"gaheads train: --resume {reference / 'last.pth'} does not fit this model "
                          "(seqattn2_cct_2_3x2_32): ")
    assert err.endswith("; the checkpoint holds a cct_2_3x2_32: leave out --model to resume it\n")
