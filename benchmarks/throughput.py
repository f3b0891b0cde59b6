"""Training and inference throughput of head models against their plain backbones.

    .venv/bin/python benchmarks/throughput.py                       # default pairs, CPU
    .venv/bin/python benchmarks/throughput.py --models ga8_cct_7_3x1_32:cct_7_3x1_32 --repeats 7
    .venv/bin/python benchmarks/throughput.py --device cuda --amp --channels-last \\
        --models ga_convnext_tiny:convnext_tiny --json gpu.json

Every model of a group (a baseline and the models compared with it) is built once; then the
timed rounds run round-robin — baseline, model 1, model 2, baseline, ... — so that a load
change on a shared machine hits all of them alike, and each model's figure is the median over
rounds. A training step is forward + loss + backward + (fused) AdamW step (the multi-head loss with
λ = -0.8 for multi-head models, cross-entropy for timm models); inference is a forward pass in
eval mode under ``torch.inference_mode``. The MACs ratio uses ``gaheads.flops.count_macs``
(batch 1). On CPU the process CPU time per step is recorded too: under load from other
processes it moves far less than wall-clock time, so its ratio is a steadier second opinion.
On CPU the process first sets glibc's malloc to reuse freed memory, as ``gaheads train`` does
(``gaheads.cpu_memory``); ``--system-malloc`` times with the C library's defaults instead.

On CUDA each row also has the peak memory of one training step and one inference step
(``torch.cuda.max_memory_allocated`` above what the group's models already hold), the
throughput ratio (model img/s over baseline img/s, = 1 / time ratio), the MACs bound on it
(baseline MACs / model MACs) and, for the three ImageNet models, the paper's ratio. ``--json``
is rewritten after every group, so a run stopped by a time limit keeps the groups it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import timm
import torch
import torch.nn.functional as F
from torch import nn

import gaheads
from gaheads.cpu_memory import keep_freed_memory
from gaheads.flops import count_macs
from gaheads.heads import common as heads_common
from gaheads.loss import MultiBranchLoss
from gaheads.models.base import MultiBranchModel
from gaheads.models.factory import UnknownModelError

# the paper's training throughput of each head model as a fraction of its baseline's
PAPER_THROUGHPUT_RATIO = {"ga_convnext_tiny": 0.69, "ga_resnet50": 0.63, "ga_vit_small": 0.90}
DEFAULT_PAIRS = ("ga_convnext_tiny:convnext_tiny", "ga_resnet50:resnet50", "ga_vit_small:vit_small_patch16_224",
                 "seqattn8_cct_7_3x1_32:cct_7_3x1_32", "ga8_cct_7_3x1_32:cct_7_3x1_32")


@dataclass
class Timing:
    """Per-round seconds per step (wall and process CPU) of one model in one mode."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def img_s(self, batch: int) -> float:
        return batch / statistics.median(self.wall)

    def cpu_s(self) -> float:
        return statistics.median(self.cpu)


@dataclass
class Bench:
    """One model ready to time: its train and inference step functions and results."""

    name: str
    model: nn.Module
    input_size: tuple[int, int, int]
    batch: int
    macs: int
    train_step: Callable[[], None]
    infer_step: Callable[[], None]
    train: Timing = field(default_factory=Timing)
    infer: Timing = field(default_factory=Timing)
    peak_mib: dict[str, float] = field(default_factory=dict)  # mode -> MiB one step allocates at its peak (CUDA)


def parse_pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        model, sep, baseline = spec.partition(":")
        if not sep or not model or not baseline:
            raise SystemExit(f"throughput.py: --models takes MODEL:BASELINE pairs, got {spec!r}")
        pairs.append((model, baseline))
    return pairs


def default_batch_size(device: str, input_size: tuple[int, int, int]) -> int:
    """On GPU 256 for small (CIFAR-sized) inputs and 128 at ImageNet sizes; on CPU 64 and 16."""
    small = input_size[-1] <= 64
    if device != "cpu":
        return 256 if small else 128
    return 64 if small else 16


def make_bench(name: str, args: argparse.Namespace, device: torch.device) -> Bench:
    model = gaheads.create_model(name)
    if args.matmul_heads:
        heads_common.set_cpu_convolutions(model, False)
    input_size = tuple(model.pretrained_cfg["input_size"])
    macs = count_macs(model, input_size)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    batch = args.batch_size or default_batch_size(device.type, input_size)
    x = torch.randn(batch, *input_size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    num_classes = model.num_classes
    y = torch.randint(0, num_classes, (batch,), device=device)
    multi_head = isinstance(model, MultiBranchModel)
    loss_fn = MultiBranchLoss(nn.CrossEntropyLoss(), lam=-0.8) if multi_head else nn.CrossEntropyLoss()
    # torch's fused AdamW (one kernel per step on CPU and CUDA): the same update as the default
    # per-tensor loop, whose cost grows with the number of parameter tensors rather than the MACs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    run = torch.compile(model, mode=args.compile_mode, backend=args.compile_backend) if args.compile else model
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def train_step() -> None:
        model.train()
        with amp:
            out = run(x, return_branches=True) if multi_head else run(x)
            loss = loss_fn(out, y).loss if multi_head else F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), amp:
            run(x)

    return Bench(name, model, input_size, batch, macs, train_step, infer_step)


def timed(step: Callable[[], None], steps: int, device: torch.device, timing: Timing) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    timing.wall.append((time.perf_counter() - wall) / steps)
    timing.cpu.append((time.process_time() - cpu) / steps)


def run_group(benches: list[Bench], args: argparse.Namespace, device: torch.device) -> None:
    """Warm up, then time training rounds and inference rounds round-robin over the group."""
    for mode in ("train", "infer"):
        for b in benches:
            for _ in range(args.warmup):
                getattr(b, f"{mode}_step")()
        if device.type == "cuda":
            for b in benches:
                b.peak_mib[mode] = peak_step_mib(getattr(b, f"{mode}_step"), device)
        for r in range(args.repeats):
            for b in benches:
                timed(getattr(b, f"{mode}_step"), args.steps, device, getattr(b, mode))
            line = "  ".join(f"{b.name} {b.batch / getattr(b, mode).wall[-1]:.1f}" for b in benches)
            print(f"  {mode} round {r + 1}/{args.repeats}: {line} img/s", file=sys.stderr, flush=True)


def peak_step_mib(step: Callable[[], None], device: torch.device) -> float:
    """MiB one call of ``step`` allocates at its peak beyond what is allocated before it (CUDA)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def pair_result(model: Bench, base: Bench, args: argparse.Namespace, device: torch.device) -> dict:
    batch, base_batch = model.batch, base.batch
    row = {
        "model": model.name, "baseline": base.name, "device": device_name(device),
        "batch_size": batch, "input_size": list(model.input_size),
        "amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
        "train_img_s": model.train.img_s(batch), "baseline_train_img_s": base.train.img_s(base_batch),
        "infer_img_s": model.infer.img_s(batch), "baseline_infer_img_s": base.infer.img_s(base_batch),
        "macs": model.macs, "baseline_macs": base.macs,
    }
    row["train_time_ratio"] = row["baseline_train_img_s"] / row["train_img_s"]
    row["infer_time_ratio"] = row["baseline_infer_img_s"] / row["infer_img_s"]
    row["macs_ratio"] = model.macs / base.macs
    row["train_throughput_ratio"] = 1 / row["train_time_ratio"]
    row["infer_throughput_ratio"] = 1 / row["infer_time_ratio"]
    row["macs_bound"] = base.macs / model.macs  # the throughput ratio if time followed the MACs
    row["train_vs_macs_bound"] = row["train_throughput_ratio"] / row["macs_bound"]
    paper = PAPER_THROUGHPUT_RATIO.get(model.name)
    row["paper_throughput_ratio"] = paper
    row["train_vs_paper"] = row["train_throughput_ratio"] / paper if paper else None
    for mode in ("train", "infer"):
        row[f"{mode}_peak_mib"] = model.peak_mib.get(mode)
        row[f"baseline_{mode}_peak_mib"] = base.peak_mib.get(mode)
    row["compile_mode"] = args.compile_mode if args.compile else None
    row["compile_backend"] = args.compile_backend if args.compile else None
    if device.type == "cpu":
        row["train_cpu_time_ratio"] = model.train.cpu_s() / base.train.cpu_s()
        row["infer_cpu_time_ratio"] = model.infer.cpu_s() / base.infer.cpu_s()
    row.update(repeats=args.repeats, steps=args.steps, warmup=args.warmup, threads=torch.get_num_threads(),
               matmul_heads=args.matmul_heads, malloc=args.malloc, torch=torch.__version__, timm=timm.__version__)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def format_table(rows: list[dict]) -> str:
    head = ("| model | baseline | train img/s | baseline train img/s | train time ratio | infer img/s "
            "| baseline infer img/s | infer time ratio | MACs ratio | train ratio - MACs ratio |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['baseline']} | {r['train_img_s']:.1f} | {r['baseline_train_img_s']:.1f} "
                     f"| {r['train_time_ratio']:.3f} | {r['infer_img_s']:.1f} | {r['baseline_infer_img_s']:.1f} "
                     f"| {r['infer_time_ratio']:.3f} | {r['macs_ratio']:.3f} "
                     f"| {r['train_time_ratio'] - r['macs_ratio']:+.3f} |")
    lines += ["", "| model | train throughput ratio | MACs bound | vs MACs bound | paper | vs paper "
              "| train peak MiB | baseline train peak MiB | infer peak MiB | baseline infer peak MiB |",
              "|" + "---|" * 10]

    def num(v: float | None, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['model']} | {r['train_throughput_ratio']:.3f} | {r['macs_bound']:.3f} "
                     f"| {r['train_vs_macs_bound']:.3f} | {num(r['paper_throughput_ratio'], '.2f')} "
                     f"| {num(r['train_vs_paper'])} | {num(r['train_peak_mib'], '.0f')} "
                     f"| {num(r['baseline_train_peak_mib'], '.0f')} | {num(r['infer_peak_mib'], '.0f')} "
                     f"| {num(r['baseline_infer_peak_mib'], '.0f')} |")
    if rows and "train_cpu_time_ratio" in rows[0]:
        lines += ["", "| model | train CPU-time ratio | infer CPU-time ratio | MACs ratio |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['train_cpu_time_ratio']:.3f} | {r['infer_cpu_time_ratio']:.3f} "
                  f"| {r['macs_ratio']:.3f} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_PAIRS), metavar="MODEL:BASELINE",
                   help="pairs to compare (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile mode (implies --compile)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (implies --compile when not inductor; aot_eager: no code generation, "
                        "for quick checks)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: on GPU 256 at 32x32 inputs, 128 at 224x224; on CPU 64 and 16")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model and mode (default 2, GPU 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds; the median counts (default 5, GPU 10)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round (default 1, GPU 10)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--matmul-heads", action="store_true",
                   help="run the heads' per-token products as matmuls on CPU too (default there: 1x1 convolutions)")
    p.add_argument("--system-malloc", action="store_true",
                   help="keep glibc's malloc defaults on CPU (default: reuse freed memory, as gaheads train does; "
                        "see gaheads/cpu_memory.py)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the results as a JSON list (rewritten after each group)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the tables as Markdown")
    args = p.parse_args(argv)
    args.compile = args.compile or args.compile_mode is not None or args.compile_backend != "inductor"
    gpu = args.device == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    args.repeats = args.repeats if args.repeats is not None else (10 if gpu else 5)
    args.steps = args.steps if args.steps is not None else (10 if gpu else 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    args.malloc = "system"
    if device.type == "cpu" and not args.system_malloc and keep_freed_memory():
        args.malloc = "reuse freed memory"
    torch.manual_seed(0)
    groups: dict[str, list[str]] = {}  # baseline -> models compared with it
    for model, baseline in parse_pairs(args.models):
        groups.setdefault(baseline, []).append(model)
    rows = []
    for baseline, models in groups.items():
        names = [baseline] + [m for m in models if m != baseline]
        benches: dict[str, Bench] = {}
        for name in names:
            try:
                benches[name] = make_bench(name, args, device)
            except UnknownModelError:
                print(f"skip {name}: not registered (yet)", file=sys.stderr)
        if baseline not in benches or len(benches) < 2:
            print(f"skip group {baseline}: nothing to compare", file=sys.stderr)
            continue
        print(f"timing {', '.join(benches)} on {device_name(device)}, malloc: {args.malloc}",
              file=sys.stderr, flush=True)
        run_group(list(benches.values()), args, device)
        rows += [pair_result(benches[m], benches[baseline], args, device) for m in names[1:] if m in benches]
        del benches
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_results(rows, args)
    if not rows:
        print("throughput.py: no pair could be timed", file=sys.stderr)
        return 1
    print(format_table(rows))
    return 0


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_table(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
