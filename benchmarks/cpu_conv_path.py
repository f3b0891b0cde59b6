"""Does the heads' CPU convolution path still pay? Forward + backward with it on and off, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cpu_conv_path.py --repeats 7

On CPU the heads run their large per-token products as oneDNN 1x1 convolutions instead of MKL
matmuls (the ``cpu_convolutions`` flag of each head module; ``set_cpu_convolutions`` switches a
model). This times each head alone (B = 64, N = 256, C = 256, K = 8, 100 classes) and one whole
model's training step, both paths in interleaved rounds, and reports the median process CPU time
per path and their ratio (CPU time, not wall time: it moves little when other processes share
the cores). Both paths compute the same function (tests/test_heads.py checks it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import timm
import torch

import gaheads  # noqa: F401  (registers the models)
from gaheads.heads import create_head
from gaheads.heads.common import set_cpu_convolutions
from gaheads.loss import MultiBranchLoss

HEADS = {
    "ga": dict(gram_dim=64, contraction_groups=8, attn_dim=64, mlp_groups=2),
    "seqattn": dict(attn_dim=64, mlp_groups=2),
}


def head_step(kind: str, batch: int) -> tuple[torch.nn.Module, Callable[[], None]]:
    head = create_head(kind, dim=256, num_classes=100, num_branches=8, **HEADS[kind])
    x = torch.randn(batch, 256, 256, requires_grad=True)

    def step() -> None:
        head(x).sum().backward()

    return head, step


def model_step(name: str, batch: int) -> tuple[torch.nn.Module, Callable[[], None]]:
    model = timm.create_model(name, num_classes=100).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    loss_fn = MultiBranchLoss(lam=-0.8)

    def step() -> None:
        loss_fn(model.forward_heads(x), y)[0].backward()

    return model, step


def cpu_seconds(step: Callable[[], None]) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--model", default="seqattn8_cct_7_3x1_32")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    cases = {f"{k} head": head_step(k, args.batch) for k in HEADS}
    cases[f"{args.model} train step"] = model_step(args.model, args.batch)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch, "cases": {}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"median CPU seconds of {args.repeats} interleaved rounds")
    print("| case | convolution path (s) | matmul path (s) | matmul / convolution |\n|---|---|---|---|")
    for case, (module, step) in cases.items():
        times: dict[str, list[float]] = {"conv": [], "matmul": []}
        for flag in (True, False):  # warm both paths
            set_cpu_convolutions(module, flag)
            step()
        for _ in range(args.repeats):
            for path, flag in (("conv", True), ("matmul", False)):
                set_cpu_convolutions(module, flag)
                times[path].append(cpu_seconds(step))
        conv, mm = statistics.median(times["conv"]), statistics.median(times["matmul"])
        results["cases"][case] = {"conv_s": conv, "matmul_s": mm, "ratio": mm / conv}
        print(f"| {case} | {conv:.3f} | {mm:.3f} | {mm / conv:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
