"""DDP on the CPU: torchrun with 2 gloo ranks writes one checkpoint whose metrics cover both ranks' shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import gaheads
from gaheads.checkpoint import load_checkpoint
from gaheads.data import create_dataset, create_transform
from gaheads.metrics import BranchAccuracy

sys.path.insert(0, str(Path(__file__).parent))
from test_train_engine import make_imagefolder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_ranks_write_one_checkpoint_with_reduced_metrics(tmp_path):
    data = make_imagefolder(tmp_path / "data", {"train": 24, "val": 7})  # 7: the ranks get 4 and 3 images
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "train.py"), str(data), "--model", "seqattn2_cct_2_3x2_32", "-b", "4", "--grad-accumulation",
           "2", "-j", "0", "--opt", "adamw", "--lr", "1e-3", "--aug-repeats", "0", "--epochs", "1", "--no-progress",
           "--output", str(out), "--log-interval", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("gaheads train: done") == 1  # only rank 0 reports
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "curves.png", "last.pth", "metrics.csv",
                                                     "model.json", "model.safetensors", "steps.csv", "summary.json"]
    ck = load_checkpoint(out / "last.pth")
    # 12 images per rank = 3 batches of 4; accumulation 2 -> 2 optimizer steps
    assert ck["step"] == 2 and ck["loader"]["world_size"] == 2 and len(ck["rng"]["ranks"]) == 2
    assert ck["metrics"]["eval_samples"] == 7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["eval_samples"] == 7

    # the reduced accuracy equals evaluating the saved weights on the whole val set in one process
    model = gaheads.load(out / "last.pth")
    val = create_dataset("imagefolder", data, "val", transform=create_transform(ck["data_config"], False))
    acc = BranchAccuracy(model.num_branches)
    with torch.no_grad():
        x = torch.stack([val[i][0] for i in range(len(val))])
        y = torch.tensor([val[i][1] for i in range(len(val))])
        acc.update(model(x, return_branches=True), y)
    expected = acc.compute()
    assert ck["metrics"]["top1"] == expected["top1"] and ck["metrics"]["top5"] == expected["top5"]
    assert [ck["metrics"][f"branch_top1_{k}"] for k in range(2)] == expected["branch_top1"]
