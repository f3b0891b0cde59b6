"""``gaheads validate --checkpoint PATH [DATA] [--dataset KIND] [--split val] [-b N] [--diversity] [--json]``.

Prints top-1/top-5 of the ensemble (softmax of the mean of the K branch logits) and of each
branch, and ``agreement``: the percentage of images on which all K branches predict the same
class. ``--diversity`` adds the head diversity report (definitions in ``gaheads.diversity``):

- pairwise agreement A[i, j]: % of images on which branches i and j have the same top-1 class;
- probability correlation R[i, j]: Pearson correlation of branch i's and branch j's softmax
  probabilities, with every (image, class) pair of the set as one paired observation;
- each branch's top-1 against the ensemble's,

as a table on stdout, ``diversity.png`` (two heatmaps and a bar chart) and ``diversity.json``
in ``--output`` (default: the checkpoint's folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import CheckpointError, load
from ..data import DATASET_KINDS, DataError, create_dataset, create_loader, create_transform
from ..diversity import BranchDiversity, plot_diversity
from ..metrics import BranchAccuracy
from . import add_checkpoint_args


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, diversity: bool = False,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy of the ensemble and each branch over ``loader``; with ``diversity`` also
    ``agreement_matrix``/``correlation``/``logprob_correlation`` (K x K) and their off-diagonal means."""
    device = torch.device(device)
    model.eval()
    k = model.num_branches
    acc = BranchAccuracy(k, device)
    div = BranchDiversity(k, device) if diversity else None
    for images, target in loader:
        logits = model(images.to(device), return_branches=True).float()  # (B, K, n)
        target = target.to(device)
        acc.update(logits, target)
        if div is not None:
            div.update(logits)
    report: dict[str, Any] = {"samples": acc.samples, "branches": k, **acc.compute()}
    if div is not None:
        d = div.compute()
        report.update(agreement_matrix=d["agreement"], correlation=d["correlation"],
                      logprob_correlation=d["logprob_correlation"], mean_agreement=d["mean_agreement"],
                      mean_correlation=d["mean_correlation"], mean_logprob_correlation=d["mean_logprob_correlation"])
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: one row for the ensemble, one per branch; diversity matrices when present."""
    k = report["branches"]
    div = "correlation" in report
    head = f"{'':<10}{'top-1':>8}{'top-5':>8}" + (f"{'agree%':>9}{'corr':>8}" if div else "")
    lines = [f"{report['samples']} images, {k} branches", head,
             f"{'ensemble':<10}{report['top1']:>8.2f}{report['top5']:>8.2f}"]
    for i in range(k):
        row = f"{'branch ' + str(i):<10}{report['branch_top1'][i]:>8.2f}{report['branch_top5'][i]:>8.2f}"
        if div and k > 1:
            others = [j for j in range(k) if j != i]
            row += (f"{sum(report['agreement_matrix'][i][j] for j in others) / len(others):>9.1f}"
                    f"{sum(report['correlation'][i][j] for j in others) / len(others):>8.3f}")
        lines.append(row)
    lines.append(f"all {k} branches agree on {report['agreement']:.2f}% of images")
    if div:
        lines.append(f"pairwise agreement % (mean over pairs {report['mean_agreement']:.2f}):")
        lines += ["  " + " ".join(f"{v:7.2f}" for v in r) for r in report["agreement_matrix"]]
        lines.append(f"probability correlation (mean over pairs {report['mean_correlation']:.4f}):")
        lines += ["  " + " ".join(f"{v:7.4f}" for v in r) for r in report["correlation"]]
        lines.append(f"log-probability correlation (mean over pairs {report['mean_logprob_correlation']:.4f}):")
        lines += ["  " + " ".join(f"{v:7.4f}" for v in r) for r in report["logprob_correlation"]]
        best = max(report["branch_top1"])
        lines.append(f"ensemble top-1 - best branch top-1: {report['top1'] - best:+.2f} points")
    return "\n".join(lines)


def write_diversity(report: dict[str, Any], folder: Path, title: str) -> tuple[Path, Path]:
    """``diversity.png`` (heatmaps + per-branch bars) and ``diversity.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    png, js = folder / "diversity.png", folder / "diversity.json"
    plot_diversity({**report, "agreement": report["agreement_matrix"]}, str(png), title=title)
    js.write_text(json.dumps(report, indent=2))
    return png, js


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads validate", description="Accuracy of the ensemble and every branch.")
    p.add_argument("data", nargs="?", default=None, help="data root (not needed for mnist5k)")
    add_checkpoint_args(p)
    p.add_argument("--dataset", default="imagefolder", choices=DATASET_KINDS, help="dataset kind (default imagefolder)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-j", "--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--diversity", action="store_true", help="add the head diversity report, heatmap and JSON")
    p.add_argument("--output", default=None, help="folder for diversity.png/json (default: the checkpoint's folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        model = load(args.checkpoint, use_ema=not args.no_ema).to(torch.device(args.device))
        transform = create_transform(model.data_config, is_training=False)
        dataset = create_dataset(args.dataset, args.data, args.split, transform=transform)
        if len(dataset.classes) != model.num_classes:
            raise DataError(f"the {args.dataset} {args.split} split has {len(dataset.classes)} classes but the "
                            f"model predicts {model.num_classes}")
        if model.class_names and list(model.class_names) != list(dataset.classes):
            print("gaheads validate: warning: the data's class names differ from the checkpoint's", file=sys.stderr)
        loader = create_loader(dataset, args.batch_size, is_training=False, num_workers=args.workers)
        report = evaluate(model, loader, diversity=args.diversity, device=args.device)
        report.update(checkpoint=str(args.checkpoint), dataset=args.dataset, split=args.split)
        if getattr(dataset, "num_skipped", 0):
            report["skipped"] = dataset.skipped
        files = ()
        if args.diversity:
            folder = Path(args.output) if args.output else Path(args.checkpoint).parent
            files = write_diversity(report, folder, f"{Path(args.checkpoint).name} on {args.dataset}/{args.split}")
    except (CheckpointError, DataError, ValueError, OSError) as e:
        print(f"gaheads validate: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if report.get("skipped"):
            print(f"skipped {len(report['skipped'])} unreadable images "
                  "(the data loader put the next readable image in their place)")
    for f in files:
        print(f"wrote {f}", file=sys.stderr if args.json else sys.stdout)
    return 0

