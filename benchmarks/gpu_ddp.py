"""DDP in one process under torchrun, stopped by SIGTERM and resumed: the GPU check's training step.

    python benchmarks/gpu_ddp.py drive --out DIR [--smoke]     # the whole check; writes DIR/result.json
    torchrun --standalone --nproc-per-node 1 benchmarks/gpu_ddp.py worker TRAIN FLAGS...

``worker`` is ``gaheads train`` with one difference: it always joins a process group (nccl on
CUDA, gloo on CPU) and wraps the model in DistributedDataParallel, also when torchrun starts a
single process, where the trainer itself would train without DDP. So one GPU exercises the
nccl process group, DDP's gradient buckets and all-reduce, the distributed sampler and the
rank-aware checkpoints.

``drive`` writes a CIFAR-100-layout data set of random images, then runs three trainings of a
CCT with ``--deterministic`` and a loss row per step: an uninterrupted reference; the same run,
sent SIGTERM (to torchrun, as a batch scheduler would) once it has logged a third of its
steps; and a resume of the interrupted run from its last.pth. It checks that the interrupted
run exited with 143 after writing a mid-epoch checkpoint, and compares the resumed run's loss
at every step after the resume point with the reference's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def worker(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist

    from gaheads.threads import apply_threads
    from gaheads.train import distributed as dist_utils
    from gaheads.train.config import ConfigError, parse_args
    from gaheads.train.engine import Trainer
    from gaheads.train.faults import StopRequest, TrainingInterrupted

    @dataclass(frozen=True)
    class GroupContext(dist_utils.DistContext):
        """A rank of a process group, counted as distributed even when the group has one process."""

        @property
        def distributed(self) -> bool:
            return True

    try:
        args = parse_args(argv)
    except ConfigError as e:
        print(f"gpu_ddp.py: {e}", file=sys.stderr)
        return 2
    apply_threads(args.threads)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = dist_utils.pick_device(args.device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    ctx = GroupContext(dist.get_rank(), dist.get_world_size(), local, device)
    print(f"gpu_ddp.py: rank {ctx.rank} of {ctx.world_size}, backend {dist.get_backend()}, device {device}",
          flush=True)
    stop = StopRequest(announce=ctx.is_main).install()
    try:
        trainer = Trainer(args, ctx, stop)
        assert trainer.ddp is not None, "the model is not wrapped in DDP"
        trainer.fit()
        return 0
    except TrainingInterrupted as e:
        print(f"gpu_ddp.py: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        stop.restore()
        dist.destroy_process_group()


def write_cifar(root: Path, n_train: int, n_test: int, classes: int = 10, seed: int = 0) -> Path:
    """root/cifar-100-python/{meta,train,test}: random 32x32 images whose class sets a colour shift."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, classes, n)
        base = rng.integers(0, 160, (n, 3, 1024))
        shift = (labels[:, None, None] * np.array([9, 5, 3])[None, :, None]) % 96
        data = (base + shift).clip(0, 255).astype(np.uint8).reshape(n, 3072)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": [0] * n}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(classes)], "coarse_label_names": ["all"]}, f)
    return root


def losses(run: Path) -> dict[int, float]:
    path = run / "steps.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}


def torchrun_cmd(flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            str(Path(__file__).resolve()), "worker", *flags]


def drive(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gpu_ddp.py drive")
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (gloo)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.smoke:  # 1 epoch of 6 steps of a CCT-2 on the CPU
        model, batch, n_train, epochs, workers, device = "seqattn2_cct_2_3x2_32", 8, 48, 1, 0, "cpu"
    else:  # 2 epochs of 100 steps of the paper's CCT-7/3x1 on one GPU
        model, batch, n_train, epochs, workers, device = "seqattn8_cct_7_3x1_32", 128, 12800, 2, 8, "cuda"
    data = write_cifar(out / "data", n_train, 256 if not a.smoke else 16)
    steps_total = epochs * (n_train // batch)
    stop_at = max(steps_total // 3, 1)  # the stop lands a step or two later: inside the first half of the run
    common = [str(data), "--dataset", "cifar100", "--model", model, "-b", str(batch), "--epochs", str(epochs),
              "-j", str(workers), "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "1", "--aug-repeats", "0",
              "--deterministic", "--no-progress", "--log-interval", "1", "--device", device]
    if not a.smoke:
        common += ["--amp", "--channels-last"]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    if a.smoke:
        env["OMP_NUM_THREADS"] = "1"
    result: dict = {"model": model, "batch_size": batch, "epochs": epochs, "steps": steps_total, "device": device,
                    "backend": "gloo" if a.smoke else "nccl", "stop_requested_at_step": stop_at}

    def run(name: str, extra: list[str]) -> subprocess.CompletedProcess:
        t = time.perf_counter()
        proc = subprocess.run(torchrun_cmd([*common, "--output", str(out / name), *extra]), capture_output=True,
                              text=True, env=env)
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        result[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
        result[f"{name}_exit"] = proc.returncode
        return proc

    ref = run("reference", [])
    if ref.returncode != 0:
        return finish(out, result, f"the reference run failed (exit {ref.returncode}); see {out / 'reference.log'}")
    summary = json.loads((out / "reference" / "summary.json").read_text())
    result["reference_img_s"] = summary.get("img_per_sec")

    # the interrupted run: SIGTERM to torchrun once `stop_at` steps are logged
    t = time.perf_counter()
    log = open(out / "interrupted.log", "w")
    proc = subprocess.Popen(torchrun_cmd([*common, "--output", str(out / "interrupted")]), stdout=log,
                            stderr=subprocess.STDOUT, text=True, env=env)
    while proc.poll() is None and max(losses(out / "interrupted"), default=0) < stop_at:
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait()
    log.close()
    result["interrupted_seconds"] = round(time.perf_counter() - t, 1)
    result["interrupted_exit"] = proc.returncode
    text = (out / "interrupted.log").read_text()
    result["worker_exit_143"] = "stopped by SIGTERM" in text
    last = out / "interrupted" / "last.pth"
    if not last.is_file() or not result["worker_exit_143"]:
        return finish(out, result, f"the interrupted run wrote no resumable checkpoint; see {out / 'interrupted.log'}")
    import torch

    ck = torch.load(last, map_location="cpu", weights_only=False)
    result["checkpoint_step"], result["checkpoint_epoch_step"] = int(ck["step"]), int(ck["epoch_step"])
    result["checkpoint_world_size"] = int(ck["loader"]["world_size"])
    del ck

    res = run("resumed", ["--resume", str(last)])
    if res.returncode != 0:
        return finish(out, result, f"the resumed run failed (exit {res.returncode}); see {out / 'resumed.log'}")
    ref_l, res_l = losses(out / "reference"), losses(out / "resumed")
    after = [s for s in ref_l if s > result["checkpoint_step"]]
    missing = [s for s in after if s not in res_l]
    diffs = [abs(res_l[s] - ref_l[s]) / max(abs(ref_l[s]), 1e-12) for s in after if s in res_l]
    result["compared_steps"] = len(diffs)
    result["max_rel_loss_diff"] = max(diffs, default=None)
    result["identical_steps"] = sum(res_l[s] == ref_l[s] for s in after if s in res_l)
    if missing or not diffs:
        return finish(out, result, f"the resumed run logged no loss for {len(missing)} of {len(after)} steps")
    tol = 0.0 if a.smoke else 1e-4  # bit-exact on the CPU; deterministic CUDA kernels, rounding tolerance
    if result["max_rel_loss_diff"] > tol:
        return finish(out, result, f"resumed loss differs from the reference by {result['max_rel_loss_diff']:.3g} "
                                   f"(relative; allowed {tol})")
    return finish(out, result, None)


def finish(out: Path, result: dict, problem: str | None) -> int:
    result["status"] = "ok" if problem is None else "fail"
    if problem:
        result["error"] = problem
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if problem is None else 1


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("worker", "drive"):
        print("usage: gpu_ddp.py drive --out DIR [--smoke] | gpu_ddp.py worker TRAIN FLAGS...", file=sys.stderr)
        sys.exit(2)
    sys.exit(worker(sys.argv[2:]) if sys.argv[1] == "worker" else drive(sys.argv[2:]))
