"""``gaheads sweep SETUP... --heads 1 2 4 8 --GA_lam 0 -0.4 -0.8 [-m BACKBONE...] [--seeds S...]``.

The GA paper's ablations as one command: the "number of heads x λ" factor analysis and the
"different backbones, baseline vs GA" comparison. For every setup and backbone it trains the
backbone's own baseline (once per seed) and ``<head><K>`` for every head count K and every λ
(``--GA_lam``) and seed. A CCT architecture name (``cct_2_3x2_32``) gives ``ga<K>_cct_2_3x2_32``
and its baseline is the SeqPool CCT; any other name is a timm model and gives
``ga<K>@<name>`` against the plain timm classifier.

Each cell is a normal run folder, ``<output>/<setup>/<model>/lam<λ>[-seed<S>]`` (baselines:
``<output>/<setup>/<backbone>/baseline[-seed<S>]``), trained by the same machinery as
``gaheads multi-train`` (setups, recipes, flags, resume, torchrun): running the command again
keeps finished cells, resumes an unfinished one and refuses a folder trained with other flags.
After every cell it rewrites ``results.json`` (every run and every cell), ``results.csv`` and
``results.md`` (per cell: top-1 / top-5 mean ± sd over the seeds) and ``sweep_<setup>.png``
(top-1 against heads, one line per λ, the baseline as a band; one panel per backbone).
Any other flag goes to every run (gaheads train's flags), e.g. ``--epochs 1 -b 32``.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .multi import (
    is_rank0,
    one_line,
    refuse_before_running,
    resolve_setup,
    run_in_process_group,
    train_argv,
    train_or_keep,
)

PROG = "gaheads sweep"
HEAD_KINDS = ("ga", "seqattn", "sg", "at")
CELL_COLUMNS = ("setup", "backbone", "model", "heads", "GA_lam", "runs", "failed", "params", "top1_mean", "top1_sd",
                "top5_mean", "top5_sd")


@dataclass(frozen=True)
class Cell:
    """One (setup, backbone, heads, λ) point; ``heads`` 0 is the backbone's baseline."""

    setup: str
    backbone: str
    model: str
    heads: int
    lam: float | None  # None: the baseline (one branch, no decorrelation)

    def folder(self, output: Path, seed: int | None) -> Path:
        name = "baseline" if self.lam is None else f"lam{self.lam:g}"
        return output / self.setup / self.model / (name if seed is None else f"{name}-seed{seed}")


def is_cct_arch(backbone: str) -> bool:
    from ..models.cct import CCT_ARCHS

    return backbone in CCT_ARCHS


def head_model(backbone: str, head: str, k: int) -> str:
    """The model name of ``head`` with ``k`` branches on ``backbone``."""
    return f"{head}{k}_{backbone}" if is_cct_arch(backbone) else f"{head}{k}@{backbone}"


def cells(setup: str, backbone: str, head: str, heads: Sequence[int], lams: Sequence[float],
          baseline: bool = True) -> list[Cell]:
    """The backbone's baseline (if asked) then every (K, λ), K outermost."""
    out = [Cell(setup, backbone, backbone, 0, None)] if baseline else []
    return out + [Cell(setup, backbone, head_model(backbone, head, k), k, lam) for k in heads for lam in lams]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].strip("`"), allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Setups and recipes as in gaheads multi-train (gaheads multi-train -h lists "
                                       "them). Any other flag is passed to each run; under torchrun every run is "
                                       "distributed and only rank 0 writes the table and figure.")
    p.add_argument("setups", nargs="+", metavar="SETUP", help="mnist5k, cifar100, imagenet, or data folders")
    p.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4, 8], metavar="K", help="branch counts")
    p.add_argument("--GA_lam", "--GA-lam", dest="lams", type=float, nargs="+", default=[0.0, -0.4, -0.8],
                   metavar="LAMBDA", help="decorrelation weights λ")
    p.add_argument("-m", "--backbones", "--model", dest="backbones", nargs="+", default=["cct_2_3x2_32"],
                   metavar="BACKBONE", help="CCT architectures (cct_2_3x2_32, cct_7_3x1_32, ...) or timm models")
    p.add_argument("--head", default="ga", choices=HEAD_KINDS, help="the multi-branch head")
    p.add_argument("--no-baseline", action="store_true", help="skip the backbones' own baselines")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train every cell once per seed")
    p.add_argument("-c", "--config", "--recipe", dest="recipe", default=None, metavar="RECIPE|FILE.yaml",
                   help="train every setup with this recipe instead of its own")
    p.add_argument("--data-root", default="data", help="folder holding cifar-100-python/ and imageNet/{train,val}")
    p.add_argument("--epochs", type=int, default=None, help="override every setup's epochs")
    p.add_argument("--img-size", type=int, default=None, help="input size for every run (overrides the setup's)")
    p.add_argument("--output", default="runs/sweep", help="folder for the runs, the tables and the figures")
    return p


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell (in first-seen order): mean and sd over its finished seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["setup"], r["backbone"], r["model"], r["heads"], r["GA_lam"]), []).append(r)
    rows = []
    for (setup, backbone, model, heads, lam), members in groups.items():
        ok = [m for m in members if m["status"] == "ok"]
        t1, s1 = mean_sd([m["top1"] for m in ok])
        t5, s5 = mean_sd([m["top5"] for m in ok])
        rows.append(dict(setup=setup, backbone=backbone, model=model, heads=heads, GA_lam=lam, runs=len(ok),
                         failed=len(members) - len(ok), params=ok[0]["params"] if ok else None,
                         top1_mean=t1, top1_sd=s1, top5_mean=t5, top5_sd=s5))
    return rows


def write_results(runs: list[dict[str, Any]], output: Path) -> list[dict[str, Any]]:
    """results.json / .csv / .md and one figure per setup; returns the cell rows."""
    from ..checkpoint import atomic_write

    table = summarise(runs)
    atomic_write(output / "results.json",
                 lambda tmp: Path(tmp).write_text(json.dumps({"cells": table, "runs": runs}, indent=2) + "\n"))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CELL_COLUMNS)
            w.writeheader()
            w.writerows(table)

    atomic_write(output / "results.csv", write_csv)

    def pm(m: float | None, s: float | None) -> str:
        return "" if m is None else f"{m:.2f} ± {s:.2f}"

    lines = ["| setup | backbone | model | heads | λ | runs | params | top-1 | top-5 |", "|" + "---|" * 9]
    for r in table:
        lam = "baseline" if r["GA_lam"] is None else f"{r['GA_lam']:g}"
        runs_txt = f"{r['runs']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        lines.append(f"| {r['setup']} | {r['backbone']} | {r['model']} | {r['heads']} | {lam} | {runs_txt} | "
                     f"{r['params'] or ''} | {pm(r['top1_mean'], r['top1_sd'])} | {pm(r['top5_mean'], r['top5_sd'])} |")
    atomic_write(output / "results.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    for setup in dict.fromkeys(r["setup"] for r in table):
        atomic_write(output / f"sweep_{setup}.png", lambda tmp, s=setup: plot(table, s, tmp), "figure")
    return table


def plot(table: list[dict[str, Any]], setup: str, path: str) -> None:
    """Top-1 against heads, one line per λ (error bars: sd over seeds), the baseline as a band; a panel per backbone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in table if r["setup"] == setup]
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    fig = Figure(figsize=(4.6 * len(backbones), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(backbones), squeeze=False)[0]
    for ax, backbone in zip(axes, backbones):
        mine = [r for r in rows if r["backbone"] == backbone and r["top1_mean"] is not None]
        heads = sorted({r["heads"] for r in mine if r["GA_lam"] is not None})
        for r in (r for r in mine if r["GA_lam"] is None):  # the baseline: its mean and a ±sd band
            ax.axhline(r["top1_mean"], color="0.3", linestyle="--", label=f"baseline ({r['model']})")
            ax.axhspan(r["top1_mean"] - r["top1_sd"], r["top1_mean"] + r["top1_sd"], color="0.85", zorder=0)
        for lam in dict.fromkeys(r["GA_lam"] for r in mine if r["GA_lam"] is not None):
            pts = sorted((r["heads"], r["top1_mean"], r["top1_sd"]) for r in mine if r["GA_lam"] == lam)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=f"λ = {lam:g}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(heads or [1])
        ax.set_xticklabels([str(h) for h in heads] or ["1"])
        ax.set_xlabel("heads (branches)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{setup}: {backbone}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def run_sweep(opts: argparse.Namespace, extra: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Train every cell and seed in turn; the per-run rows and the exit status."""
    output = Path(opts.output)
    rank0 = is_rank0()
    runs: list[dict[str, Any]] = []
    seeds = opts.seeds or [None]
    for setup_name in opts.setups:
        setup = resolve_setup(setup_name, opts.recipe)
        for backbone in opts.backbones:
            for cell in cells(setup.name, backbone, opts.head, opts.heads, opts.lams, not opts.no_baseline):
                for seed in seeds:
                    out = cell.folder(output, seed)
                    row: dict[str, Any] = dict(setup=setup.name, backbone=backbone, model=cell.model, heads=cell.heads,
                                               GA_lam=cell.lam, seed=seed, folder=str(out))
                    lam_flags = ["--GA_lam", f"{cell.lam if cell.lam is not None else 0.0:g}"]
                    start = time.perf_counter()
                    try:
                        argv, note = train_argv(setup, cell.model, opts, [*lam_flags, *extra], seed, out)
                        if rank0:
                            if note:
                                print(f"{PROG}: {note}", flush=True)
                            print(f"{PROG}: [{len(runs) + 1}] {setup.name} / {cell.model} / "
                                  + ("baseline" if cell.lam is None else f"λ {cell.lam:g}")
                                  + (f" / seed {seed}" if seed is not None else "") + f" -> {out}", flush=True)
                        summary = train_or_keep(PROG, argv, out, rank0)
                    except KeyboardInterrupt as e:  # the engine's TrainingInterrupted (a signal) or Ctrl-C
                        signum = getattr(e, "signum", signal.SIGINT)
                        row.update(status="interrupted", top1=None, top5=None, params=None,
                                   seconds=time.perf_counter() - start,
                                   reason=f"stopped by {signal.Signals(signum).name}; run the same sweep again "
                                          "to continue")
                        runs.append(row)
                        return runs, 128 + signum
                    except Exception as e:  # a failed cell is reported and the others go on
                        row.update(status="failed", top1=None, top5=None, params=None,
                                   reason=f"{type(e).__name__}: {one_line(e)}")
                    else:
                        row.update(status="ok", top1=summary.get("final_top1"), top5=summary.get("final_top5"),
                                   params=summary.get("params"), epochs=summary.get("epochs"),
                                   seconds=summary.get("train_seconds"), reason="")
                    row.setdefault("seconds", time.perf_counter() - start)
                    runs.append(row)
                    if rank0:
                        write_results(runs, output)
                        status = row["status"] if row["status"] == "ok" else f"FAILED: {row['reason']}"
                        print(f"{PROG}: {setup.name} / {cell.model}: {status}", flush=True)
    return runs, 1 if any(r["status"] != "ok" for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts, extra = build_parser().parse_known_args(argv)
    bad = [k for k in opts.heads if k < 1]
    refused = f"--heads must be >= 1, got {bad[0]}" if bad else refuse_before_running(opts)
    if refused:
        print(f"{PROG}: {refused}", file=sys.stderr)
        return 2
    output = Path(opts.output)
    runs, code = run_in_process_group(run_sweep, opts, extra)
    if is_rank0() and runs:
        write_results(runs, output)
        print(f"{PROG}: results in {output / 'results.md'}, figures {output}/sweep_<setup>.png", flush=True)
        print((output / "results.md").read_text(), end="", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
