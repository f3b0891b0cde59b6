"""SeqAttention (4 branches) vs CCT's SeqPool head on mnist5k: same backbone, same epochs, 3 seeds.

    .venv/bin/python benchmarks/seqattn_vs_seqpool.py --epochs 15

Runs ``gaheads multi-train mnist5k -m SEQATTN SEQPOOL --seeds ...`` (so each run is an ordinary
training run with its own folder, and results.{md,csv,json} list every run), then prints the
held-out top-1 as mean ± sample std over the seeds. The verdict uses the final epoch's top-1,
not the best epoch's, so no choice is made on the held-out digits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from gaheads.train.multi import main as multi_train


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


def summarize(rows: list[dict], models: Sequence[str]) -> tuple[str, dict[str, tuple[float, float]]]:
    """A markdown table of mean ± std per model, and the (mean, std) of final top-1 per model."""
    lines = ["| model | params | runs | final top-1 (mean ± std) | best top-1 (mean ± std) | seconds/run |",
             "|---|---|---|---|---|---|"]
    final: dict[str, tuple[float, float]] = {}
    for model in models:
        ok = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        if not ok:
            lines.append(f"| {model} | | 0 | failed | | |")
            continue
        final[model] = mean_std([r["top1"] for r in ok])
        best = mean_std([r["best_top1"] for r in ok])
        secs = sum(r["seconds"] for r in ok) / len(ok)
        lines.append(f"| {model} | {ok[0]['params']:,} | {len(ok)} | {final[model][0]:.2f} ± {final[model][1]:.2f} "
                     f"| {best[0]:.2f} ± {best[1]:.2f} | {secs:.0f} |")
    return "\n".join(lines), final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--seqattn", default="seqattn4_cct_2_3x2_32")
    p.add_argument("--seqpool", default="cct_2_3x2_32")
    p.add_argument("--epochs", type=int, default=15, help="epochs of every run (the mnist5k setup's and make demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", default="runs/seqattn_vs_seqpool")
    opts, extra = p.parse_known_args(argv)
    models = [opts.seqattn, opts.seqpool]
    code = multi_train(["mnist5k", "-m", *models, "--epochs", str(opts.epochs), "--seeds",
                        *map(str, opts.seeds), "--output", opts.output, "--no-progress", *extra])
    rows = json.loads((Path(opts.output) / "results.json").read_text())
    table, final = summarize(rows, models)
    print(f"\nmnist5k, {opts.epochs} epochs, seeds {' '.join(map(str, opts.seeds))}:\n{table}")
    if len(final) == 2:
        (a, sa), (b, sb) = final[opts.seqattn], final[opts.seqpool]
        verdict = "beats" if a - b > max(sa, sb) else ("ties" if a - b >= -max(sa, sb) else "loses to")
        print(f"\n{opts.seqattn} {verdict} {opts.seqpool}: {a:.2f} vs {b:.2f} "
              f"(difference {a - b:+.2f}; within one std counts as a tie)")
    return code


if __name__ == "__main__":
    sys.exit(main())
