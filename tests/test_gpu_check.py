"""benchmarks/gpu_check.sh --cpu-smoke: every step of the GPU check runs at tiny sizes on the CPU and
writes its result, so the script is known to work before a GPU sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "cuda_tests", "throughput_eager", "ddp_resume", "loader", "throughput_compiled")


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_its_results(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "GAHEADS_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1600, cwd=ROOT)
    steps = {name: json.loads((out / f"{name}.json").read_text()) for name in STEPS}
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(STEPS, "ok"), proc.stdout[-4000:]
    assert proc.returncode == 0

    assert steps["env"]["result"]["cuda_available"] is False and steps["env"]["result"]["device"] == "cpu"
    tests = steps["cuda_tests"]["result"]
    assert tests["tests"] == tests["skipped"] > 0 and list(tests["skip_reasons"]) == [
        "needs a CUDA GPU (torch sees none)"]
    rows = steps["throughput_eager"]["result"]
    assert [(r["model"], r["baseline"]) for r in rows] == [("ga2_cct_2_3x2_32", "cct_2_3x2_32"),
                                                           ("seqattn2_cct_2_3x2_32", "cct_2_3x2_32")]
    for r in rows:
        assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and r["batch_size"] == 4
        assert r["macs_bound"] == pytest.approx(1 / r["macs_ratio"]) and r["paper_throughput_ratio"] is None
        assert r["train_peak_mib"] is None  # peak memory is a CUDA figure
    compiled = steps["throughput_compiled"]["result"]
    assert [(r["compile"], r["compile_backend"]) for r in compiled] == [(True, "eager")]
    ddp = steps["ddp_resume"]["result"]
    assert ddp["backend"] == "gloo" and ddp["worker_exit_143"] is True and ddp["checkpoint_world_size"] == 1
    assert 0 < ddp["checkpoint_step"] < ddp["steps"] and ddp["checkpoint_epoch_step"] > 0
    assert ddp["compared_steps"] == ddp["steps"] - ddp["checkpoint_step"] and ddp["max_rel_loss_diff"] == 0.0
    loader = steps["loader"]["result"]
    assert [r["workers"] for r in loader["rows"]] == [0, 1]
    assert all(r[k]["img_s"] > 0 for r in loader["rows"] for k in ("gaheads", "gaheads_prefetch", "timm"))
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# gpu_check results\n") and summary.count("| ok |") == len(STEPS)
