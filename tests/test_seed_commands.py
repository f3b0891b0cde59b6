"""The SeqAttention seed's two multi_train.py commands, as typed, on tiny generated data.

Each runs in a fresh process from a working directory holding the data where the seed expects
it (``data/cifar-100-python``, ``data/imageNet/{train,val}``), with the seed's words unchanged
and tiny-size overrides appended (1 epoch, small batch, no loader workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from data_fixtures import make_cifar100, make_imagefolder

from gaheads.checkpoint import load_checkpoint
from gaheads.flops import count_params
from gaheads.models.factory import create_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "-b", "4", "--workers", "0", "--no-progress"]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cifar100_seed_command(tmp_path):
    # CUDA_VISIBLE_DEVICES=0 python3 multi_train.py cifar100 -m seqattn1_cct_7_3x1_32
    make_cifar100(tmp_path / "data", n_train=8, n_test=4, n_classes=5)
    proc = run([sys.executable, str(ROOT / "multi_train.py"), "cifar100", "-m", "seqattn1_cct_7_3x1_32", *TINY],
               tmp_path, {"CUDA_VISIBLE_DEVICES": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "multi_train" / "cifar100" / "seqattn1_cct_7_3x1_32"
    ck = load_checkpoint(out / "last.pth")
    assert ck["step"] == 2 and ck["epoch"] == 1  # 8 images, batch 4: two optimizer steps
    assert {float(st["step"]) for st in ck["optimizer"]["state"].values()} == {2.0}  # AdamW really stepped
    args = ck["args"]
    assert (args["opt"], args["lr"], args["weight_decay"], args["mixup"], args["cutmix"]) == \
        ("adamw", 5e-4, 6e-2, 0.8, 1.0)
    assert args["data_dir"] == "data" and args["dataset"] == "cifar100" and args["amp"] and args["channels_last"]
    assert torch.isfinite(torch.tensor(ck["metrics"]["loss"]))
    rows = json.loads((tmp_path / "runs" / "multi_train" / "results.json").read_text())
    assert [(r["setup"], r["model"], r["status"], r["epochs"]) for r in rows] == [
        ("cifar100", "seqattn1_cct_7_3x1_32", "ok", 1)]
    assert "--amp is ignored on cpu" in proc.stdout


def test_imagenet_torchrun_seed_command(tmp_path):
    # CUDA_VISIBLE_DEVICES=0,1 torchrun --standalone --nproc-per-node=2 multi_train.py imagenet -m cct_7_3x1_32
    make_imagefolder(tmp_path / "data" / "imageNet", classes=("n01", "n02"), per_class=4)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the torchrun console script
    seed = [*torchrun, "--standalone", "--nproc-per-node=2", str(ROOT / "multi_train.py"), "imagenet", "-m",
            "cct_7_3x1_32"]
    proc = run([*seed, "--epochs", "1", "-b", "2", "--workers", "0", "--no-progress"], tmp_path,
               {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("gaheads multi-train: imagenet: cct_7_3x1_32 trains at its own input size 32x32 (neither paper fixes it; "
            "pass --img-size to change it)") in proc.stdout
    assert proc.stdout.count("gaheads multi-train: imagenet / cct_7_3x1_32: ok") == 1  # rank 0 alone reports
    out = tmp_path / "runs" / "multi_train" / "imagenet" / "cct_7_3x1_32"
    ck = load_checkpoint(out / "last.pth")
    # 8 train images over 2 ranks, batch 2 each: two optimizer steps; the metrics cover both ranks' val shards
    assert ck["step"] == 2 and ck["loader"]["world_size"] == 2 and ck["metrics"]["eval_samples"] == 8
    assert ck["args"]["data_dir"] == str(Path("data") / "imageNet") and ck["data_config"]["input_size"] == [3, 32, 32]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["params"] == count_params(create_model("cct_7_3x1_32", num_classes=2))["total"]
