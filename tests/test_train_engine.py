"""The training engine on tiny generated data: seed commands, outputs, exact resume, non-finite losses."""

import csv
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import gaheads
from gaheads.checkpoint import load_checkpoint
from gaheads.train.cli import main
from gaheads.train.config import parse_args
from gaheads.train.engine import train
from gaheads.train.faults import TrainingInterrupted

sys.path.insert(0, str(Path(__file__).parent))
from fault_runner import NonFiniteLossAt, SignalAtStep  # noqa: E402
from test_train_config import GA_SEED_COMMANDS, train_argv  # noqa: E402


def make_imagefolder(root: Path, per_class: dict[str, int], classes: int = 3, seed: int = 0) -> Path:
    """<root>/<split>/class<c>/*.png: 32x32 images whose brightness band depends on the class."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for i in range(n):
            c = i % classes
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            arr = (rng.random((32, 32, 3)) * 60 + c * 90).clip(0, 255).astype("uint8")
            Image.fromarray(arr).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("tiny"), {"train": 24, "val": 7})


def tiny_flags(data: Path, out: Path, *extra: str) -> list[str]:
    # 24 images, -b 4, accumulation 2: 6 batches = 3 optimizer steps per epoch
    return [str(data), "--model", "seqattn2_cct_2_3x2_32", "-b", "4", "--grad-accumulation", "2", "-j", "0",
            "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "1", "--aug-repeats", "0", "--model-ema",
            "--model-ema-decay", "0.9", "--deterministic", "--no-progress", "--log-interval", "1",
            "--output", str(out), *extra]


@pytest.mark.parametrize("command", GA_SEED_COMMANDS, ids=lambda c: c.split("--model ")[1].split()[0])
def test_seed_command_runs_through_the_first_optimizer_step(command, tiny, tmp_path, capsys):
    # the seed's flags as typed (mixup, BCE, lamb, accumulation 4, --amp, channels-last, repeated --sched),
    # then overrides: a CCT-size GA model, a batch that fits 8 images, 1 epoch, no worker processes
    argv = train_argv(command).copy()
    argv[0] = str(tiny)
    argv += ["--model", "ga2_cct_2_3x2_32", "-b", "2", "--epochs", "1", "-j", "0", "--output", str(tmp_path),
             "--no-progress", "--train-split", "val"]  # 7 val images x 3 repeats: 3 batches of 2 -> 1 step
    summary = train(parse_args(argv))
    assert "--amp is ignored on cpu" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "last.pth")
    assert summary["steps"] == 1 and ck["step"] == 1 and ck["epoch"] == 1
    assert [g["step"] for g in ck["optimizer"]["param_groups"]] == [1, 1]  # one lamb update (timm counts per group)
    assert ck["args"]["grad_accumulation"] == 4 and ck["args"]["bce_loss"] and ck["args"]["opt"] == "lamb"
    assert np.isfinite(ck["metrics"]["loss"]) and ck["metrics"]["eval_samples"] == 7


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """Two epochs in one go, keeping the epoch-1 checkpoint."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(parse_args(tiny_flags(tiny, out, "--epochs", "2", "--save-every", "1")))
    return out, summary


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_outputs(straight):
    out, summary = straight
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == [
        "epoch", "loss", "task_loss", "decor_loss", "top1", "top5", "branch_top1_0", "branch_top1_1", "branch_top5_0",
        "branch_top5_1", "agreement", "model_top1", "model_top5", "eval_samples", "lr", "epoch_seconds",
        "eval_seconds", "img_per_sec", "skipped_steps", "skipped_images"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("model", "dataset", "epochs", "final_top1", "final_top5", "best_top1", "best_epoch", "train_seconds"):
        assert key in on_disk
    assert on_disk["epochs"] == 2 and on_disk["steps"] == 6 and len(on_disk["branch_top1"]) == 2
    assert on_disk["skipped_images"] == 0 and on_disk["skipped_files"] == []
    assert on_disk["final_top1"] == float(rows[1]["top1"]) and on_disk["weights"] == "ema"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_csv(out / "steps.csv")) == 6
    # released weights = the EMA weights of the last checkpoint, and gaheads.load rebuilds the model
    ck = load_checkpoint(out / "last.pth")
    model = gaheads.load(out / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["ema"][k]), k
    assert json.loads((out / "model.json").read_text())["class_names"] == ["class0", "class1", "class2"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), gaheads.load(out / "last.pth")(x))
    assert (out / "best.pth").is_file() and (out / "epoch-1.pth").is_file()


def test_resume_after_one_epoch_gives_the_same_weights(straight, tiny, tmp_path):
    out, summary = straight
    resumed = train(parse_args(tiny_flags(tiny, tmp_path, "--epochs", "2", "--resume", str(out / "epoch-1.pth"))))
    same_weights(out, tmp_path)
    a, b = read_csv(out / "metrics.csv"), read_csv(tmp_path / "metrics.csv")
    for key in ("loss", "task_loss", "decor_loss", "top1", "top5", "model_top1", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert read_csv(out / "steps.csv")[3:] == read_csv(tmp_path / "steps.csv")  # steps 4-6, loss for loss
    assert resumed["final_top1"] == summary["final_top1"] and resumed["steps"] == 6


def test_sigterm_mid_epoch_then_resume_gives_the_same_weights(straight, tiny, tmp_path):
    out, _ = straight
    with pytest.raises(TrainingInterrupted) as stopped:
        train(parse_args(tiny_flags(tiny, tmp_path, "--epochs", "2")), callbacks=[SignalAtStep(4, signal.SIGTERM)])
    assert stopped.value.exit_code == 143
    assert f"--resume {tmp_path / 'last.pth'}" in str(stopped.value)
    ck = load_checkpoint(tmp_path / "last.pth")
    assert (ck["epoch"], ck["step"], ck["epoch_step"]) == (1, 5, 2)  # stopped at the step after the signal
    train(parse_args(tiny_flags(tiny, tmp_path, "--epochs", "2", "--resume", str(tmp_path / "last.pth"))))
    same_weights(out, tmp_path)
    assert read_csv(out / "steps.csv") == read_csv(tmp_path / "steps.csv")
    assert read_csv(out / "metrics.csv")[1]["loss"] == read_csv(tmp_path / "metrics.csv")[1]["loss"]


def test_nonfinite_loss_stops_with_exit_3_or_is_skipped(tiny, tmp_path, capsys):
    flags = tiny_flags(tiny, tmp_path, "--epochs", "1")
    assert main(flags, callbacks=[NonFiniteLossAt(2)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "non-finite loss at optimizer step 2 (epoch 1, batches 3-4 of 6); sample indices [" in err
    assert "last good checkpoint: none written yet" in err
    summary = train(parse_args(flags + ["--skip-nonfinite", "1"]), callbacks=[NonFiniteLossAt(2)])
    assert summary["skipped_steps"] == 1 and summary["steps"] == 3
    assert "skipped optimizer step 2" in capsys.readouterr().out


def test_resume_errors(straight, tiny, tmp_path, capsys):
    out, _ = straight
    assert main(tiny_flags(tiny, tmp_path, "--resume", str(tmp_path / "nope.pth"))) == 2
    assert f"gaheads train: no checkpoint at {tmp_path / 'nope.pth'}" in capsys.readouterr().err
    flags = tiny_flags(tiny, tmp_path, "--resume", str(out / "last.pth"))
    flags[flags.index("seqattn2_cct_2_3x2_32")] = "seqattn4_cct_2_3x2_32"
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit this model (seqattn4_cct_2_3x2_32): shape mismatch" in err
    assert "head.classifier" in err or "head." in err
