"""Does the decorrelation loss make the branches differ? The demo model on mnist5k at two --GA_lam values.

    .venv/bin/python benchmarks/diversity_lambda.py --epochs 15 --lams -0.8 0 --seeds 0 1 2

Trains ``configs/demo_mnist5k.yaml`` (seqattn4_cct_2_3x2_32) once per (seed, lambda) via
``python -m gaheads.train -c configs/demo_mnist5k.yaml --GA_lam X --epochs E --seed S
--output DIR/seedS/lam_X``, then runs the head diversity report (``gaheads validate
--diversity``'s ``evaluate``) of each run's last.pth on the 1,000 held-out digits: mean pairwise
probability and log-probability correlation and top-1 agreement of the branches, per-branch and
ensemble top-1; and the mean of each over the seeds. Writes ``diversity.{png,json}`` into each
run folder and ``results.md`` / ``results.json`` into DIR. A finished run (its summary.json exists)
is not retrained (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from gaheads.checkpoint import load
from gaheads.cli.validate import evaluate, write_diversity
from gaheads.data import create_dataset, create_loader, create_transform

CONFIG = "configs/demo_mnist5k.yaml"


def train(lam: float, epochs: int, seed: int, out: Path) -> float:
    """One training run; returns its wall-clock seconds (0 when reused)."""
    if (out / "summary.json").is_file():  # written when a run ends
        return 0.0
    cmd = [sys.executable, "-m", "gaheads.train", "-c", CONFIG, "--GA_lam", str(lam), "--epochs", str(epochs),
           "--seed", str(seed), "--output", str(out), "--no-progress"]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def diversity(run: Path) -> dict:
    model = load(run / "last.pth")
    dataset = create_dataset("mnist5k", None, "val", transform=create_transform(model.data_config, is_training=False))
    report = evaluate(model, create_loader(dataset, 250, is_training=False), diversity=True)
    write_diversity(report, run, f"{run.name}: mnist5k held-out")
    return report


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lams", type=float, nargs="+", default=[-0.8, 0.0])
    p.add_argument("--epochs", type=int, default=15, help="epochs of every run (make demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", default="runs/diversity_lambda")
    opts = p.parse_args(argv)
    root = Path(opts.output)
    rows = []
    for seed in opts.seeds:
        for lam in opts.lams:
            run = root / f"seed{seed}" / f"lam_{lam:g}"
            seconds = train(lam, opts.epochs, seed, run)
            r = diversity(run)
            rows.append({"GA_lam": lam, "epochs": opts.epochs, "seed": seed, "train_seconds": round(seconds, 1),
                         "mean_correlation": r["mean_correlation"],
                         "mean_logprob_correlation": r["mean_logprob_correlation"],
                         "mean_agreement": r["mean_agreement"], "all_agree": r["agreement"], "top1": r["top1"],
                         "branch_top1": r["branch_top1"]})
    lines = ["| --GA_lam | seed | mean branch prob. correlation | mean branch log-prob. correlation "
             "| mean pairwise top-1 agreement % | all-branch agreement % | ensemble top-1 | branch top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['GA_lam']:g} | {r['seed']} | {r['mean_correlation']:.5f} | {r['mean_logprob_correlation']:.4f} "
              f"| {r['mean_agreement']:.2f} | {r['all_agree']:.2f} | {r['top1']:.2f} "
              f"| {', '.join(f'{v:.1f}' for v in r['branch_top1'])} |" for r in rows]
    for lam in opts.lams:  # the mean over seeds: the figure the comparison rests on
        mine = [r for r in rows if r["GA_lam"] == lam]
        lines.append(f"| **{lam:g}** | mean of {len(mine)} | **{mean([r['mean_correlation'] for r in mine]):.5f}** "
                     f"| **{mean([r['mean_logprob_correlation'] for r in mine]):.4f}** "
                     f"| {mean([r['mean_agreement'] for r in mine]):.2f} | {mean([r['all_agree'] for r in mine]):.2f} "
                     f"| {mean([r['top1'] for r in mine]):.2f} | |")
    table = "\n".join(lines)
    (root / "results.md").write_text(table + "\n")
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
