"""Training throughput against torch's thread count, on a quiet machine and next to one busy process.

    .venv/bin/python benchmarks/threads.py --threads 1 2 --steps 20 --json docs/threads_cpu.json

Model: the ``small`` / ``demo`` recipes' network (seqattn4_cct_2_3x2_32, 32x32 input), batch 64,
a training step = forward + multi-head loss (lambda -0.8) + backward + AdamW step on random
images. For each thread count it times ``--steps`` steps (after 3 warm-up steps) with no other
process started, then again while one child process spins on a core (``while True: pass``),
round-robin so that a change in the machine's load hits every setting alike. The figure is
the median over ``--repeats`` rounds in images per second.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time

import torch

from gaheads.cpu_memory import keep_freed_memory
from gaheads.loss import MultiBranchLoss, create_task_loss
from gaheads.models.factory import create_model


def spin() -> None:
    while True:
        pass


def step_time(model, loss_fn, opt, x, y, steps: int) -> float:
    for i in range(3 + steps):
        if i == 3:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        parts = loss_fn(model(x, return_branches=True), y)
        parts.loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default="seqattn4_cct_2_3x2_32")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    model = create_model(a.model, num_classes=10).train()
    loss_fn = MultiBranchLoss(create_task_loss(0.1), lam=-0.8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(a.batch_size, 3, 32, 32), torch.randint(0, 10, (a.batch_size,))
    times: dict[tuple[int, bool], list[float]] = {(t, busy): [] for t in a.threads for busy in (False, True)}
    for _ in range(a.repeats):
        for (threads, busy), out in times.items():
            torch.set_num_threads(threads)
            child = mp.get_context("fork").Process(target=spin, daemon=True) if busy else None
            if child is not None:
                child.start()
                time.sleep(0.5)
            try:
                out.append(step_time(model, loss_fn, opt, x, y, a.steps))
            finally:
                if child is not None:
                    child.terminate()
                    child.join()
    rows = []
    for (threads, busy), t in times.items():
        rows.append({"threads": threads, "competing_process": busy, "img_s": a.batch_size / statistics.median(t),
                     "rounds_img_s": [a.batch_size / v for v in t]})
    quiet = {r["threads"]: r["img_s"] for r in rows if not r["competing_process"]}
    for r in rows:
        r["vs_quiet_same_threads"] = r["img_s"] / quiet[r["threads"]]
        r["vs_best_quiet"] = r["img_s"] / max(quiet.values())
        print(f"threads {r['threads']}  {'busy ' if r['competing_process'] else 'quiet'}  {r['img_s']:7.1f} img/s  "
              f"({r['vs_quiet_same_threads']:.0%} of quiet, {r['vs_best_quiet']:.0%} of the best quiet)")
    info = {"cores": os.cpu_count(), "loadavg_before": os.getloadavg(), "model": a.model, "batch_size": a.batch_size,
            "steps": a.steps, "repeats": a.repeats, "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
