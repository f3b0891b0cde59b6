"""Does the decorrelation loss make the branches differ? The demo model on mnist5k at two --GA_lam values.

    .venv/bin/python benchmarks/diversity_lambda.py --epochs 15 --lams 0 -0.8 --seeds $(seq 0 15)

Trains ``configs/demo_mnist5k.yaml`` (seqattn4_cct_2_3x2_32) once per (seed, lambda) via
``python -m gaheads.train -c configs/demo_mnist5k.yaml --GA_lam X --epochs E --seed S
--output DIR/seedS/lam_X``, then runs the head diversity report (``gaheads validate
--diversity``'s ``evaluate``) of each run's last.pth on the 1,000 held-out digits: mean pairwise
probability and log-probability correlation and top-1 agreement of the branches, per-branch and
ensemble top-1; the mean and SD of each over the seeds, and for every λ the per-seed
difference from ``--baseline`` (default 0) with a one-sided paired t-test. Writes
``diversity.{png,json}`` into each run folder and ``results.md`` / ``results.json`` into DIR. A
finished run (its summary.json exists) is not retrained (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def mean_sd(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def paired_test(rows: list[dict], lam: float, baseline: float, key: str) -> dict:
    """One-sided paired t-test of ``key`` at ``lam`` against ``baseline`` over the seeds run with both."""
    from scipy.stats import ttest_1samp  # scipy comes with mlxtend, a dependency

    by_seed = {(r["GA_lam"], r["seed"]): r[key] for r in rows}
    diff = [by_seed[lam, s] - by_seed[baseline, s] for (lam_, s) in sorted(by_seed)
            if lam_ == lam and (baseline, s) in by_seed]
    enough = len(diff) > 1  # a t-test needs two differences; fewer gives NaN statistics
    test = ttest_1samp(diff, 0.0, alternative="less") if enough else None
    return {"GA_lam": lam, "measure": key, "seeds": len(diff),
            "mean_difference": statistics.fmean(diff) if diff else float("nan"),
            "sd": statistics.stdev(diff) if enough else float("nan"),
            "t": float(test.statistic) if enough else float("nan"),
            "p": float(test.pvalue) if enough else float("nan"), "seeds_lower": sum(d < 0 for d in diff)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lams", type=float, nargs="+", default=[-0.8, 0.0])
    p.add_argument("--epochs", type=int, default=15, help="epochs of every run (make demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baseline", type=float, default=0.0,
                   help="the --GA_lam every other value is compared with, seed by seed (paired t-test)")
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
    summary = (("mean_correlation", 5), ("mean_logprob_correlation", 4), ("mean_agreement", 2), ("all_agree", 2),
               ("top1", 2))
    for lam in opts.lams:  # the mean (± SD) over seeds: the figure the comparison rests on
        mine = [r for r in rows if r["GA_lam"] == lam]
        cells = [mean_sd([r[key] for r in mine], digits) for key, digits in summary]
        lines.append(f"| **{lam:g}** | mean ± SD of {len(mine)} | **{cells[0]}** | **{cells[1]}** | "
                     + " | ".join(cells[2:]) + " | |")
    paired = [paired_test(rows, lam, opts.baseline, key) for lam in opts.lams if lam != opts.baseline
              for key in ("mean_correlation", "mean_logprob_correlation")] if opts.baseline in opts.lams else []
    if paired:
        lines += ["", f"Per-seed difference from --GA_lam {opts.baseline:g} (one-sided paired t-test, H1: lower):", "",
                  "| --GA_lam | measure | seeds | mean difference | SD | t | p | seeds lower |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {t['GA_lam']:g} | {t['measure']} | {t['seeds']} | {t['mean_difference']:+.6f} | {t['sd']:.6f} "
                  f"| {t['t']:.2f} | {t['p']:.3f} | {t['seeds_lower']} |" for t in paired]
    table = "\n".join(lines)
    (root / "results.md").write_text(table + "\n")
    (root / "results.json").write_text(json.dumps({"runs": rows, "paired": paired}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
