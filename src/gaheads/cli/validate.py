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
from typing import TYPE_CHECKING, Any

from ..train.config import DATASETS as DATASET_KINDS  # the same kinds as gaheads.data's, without loading torch
from . import add_checkpoint_args, add_pixel_limit_arg, add_threads_arg, failed, set_up_command

if TYPE_CHECKING:  # torch and the model stack load when the command runs, so --help answers at once
    import torch
    from torch import nn
    from torch.utils.data import DataLoader


def evaluate(model: nn.Module, loader: DataLoader, diversity: bool = False,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy of the ensemble and each branch over ``loader``; with ``diversity`` also
    ``agreement_matrix``/``correlation``/``logprob_correlation`` (K x K) and their off-diagonal means."""
    import torch

    from ..diversity import BranchDiversity
    from ..metrics import BranchAccuracy

    device = torch.device(device)
    model.eval()
    k = model.num_branches
    acc = BranchAccuracy(k, device)
    div = BranchDiversity(k, device) if diversity else None
    with torch.no_grad():
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
    lines = [f"{report['samples']} images, {k} branch{'es' if k != 1 else ''}", head,
             f"{'ensemble':<10}{report['top1']:>8.2f}{report['top5']:>8.2f}"]
    for i in range(k):
        row = f"{'branch ' + str(i):<10}{report['branch_top1'][i]:>8.2f}{report['branch_top5'][i]:>8.2f}"
        if div and k > 1:
            others = [j for j in range(k) if j != i]
            row += (f"{sum(report['agreement_matrix'][i][j] for j in others) / len(others):>9.1f}"
                    f"{sum(report['correlation'][i][j] for j in others) / len(others):>8.3f}")
        lines.append(row)
    if k > 1:
        lines.append(f"all {k} branches agree on {report['agreement']:.2f}% of images")
    if div and k == 1:
        lines.append("one branch: no pairs of branches to compare (the diversity report needs 2 or more)")
    elif div:
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
    from ..checkpoint import as_storage_error, atomic_write
    from ..diversity import plot_diversity

    folder.mkdir(parents=True, exist_ok=True)
    png, js = folder / "diversity.png", folder / "diversity.json"
    try:
        plot_diversity({**report, "agreement": report["agreement_matrix"]}, str(png), title=title)
    except OSError as e:
        png.unlink(missing_ok=True)  # no half-written image left behind
        raise as_storage_error(e, png) from e
    text = json.dumps(report, indent=2)
    atomic_write(js, lambda tmp: Path(tmp).write_text(text))
    return png, js


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads validate", description="Accuracy of the ensemble and every branch.")
    p.add_argument("data", nargs="?", default=None, help="data root (not needed for mnist5k)")
    add_checkpoint_args(p)
    add_threads_arg(p)
    p.add_argument("--dataset", default="imagefolder", choices=DATASET_KINDS, help="dataset kind (default imagefolder)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-j", "--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--diversity", action="store_true", help="add the head diversity report, heatmap and JSON")
    p.add_argument("--output", default=None, help="folder for diversity.png/json (default: the checkpoint's folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_pixel_limit_arg(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from ..checkpoint import CheckpointError, load, resolve_checkpoint
    from ..data import DataError, check_classes, create_dataset, create_loader
    from ..preprocess import eval_transform, resolve_data_config

    try:
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        set_up_command(args)
        model = load(args.checkpoint, use_ema=not args.no_ema).to(torch.device(args.device))
        transform = eval_transform(resolve_data_config(model))  # the transform predict and training use
        dataset = create_dataset(args.dataset, args.data, args.split, transform=transform,
                                 max_pixels=args.max_image_pixels)
        if len(dataset.classes) != model.num_classes:
            raise DataError(f"the {args.dataset} {args.split} split has {len(dataset.classes)} classes but the "
                            f"model predicts {model.num_classes}")
        if model.class_names:  # else class i of the data would be scored as the model's class i
            check_classes(model.class_names, dataset, "the checkpoint", args.split)
        loader = create_loader(dataset, args.batch_size, is_training=False, num_workers=args.workers)
        report = evaluate(model, loader, diversity=args.diversity, device=args.device)
        report.update(checkpoint=str(args.checkpoint), dataset=args.dataset, split=args.split)
        if getattr(dataset, "num_skipped", 0):
            report["skipped"] = dataset.skipped
        files = ()
        if args.diversity:
            folder = Path(args.output) if args.output else resolve_checkpoint(args.checkpoint).parent
            files = write_diversity(report, folder, f"{Path(args.checkpoint).name} on {args.dataset}/{args.split}")
    except (CheckpointError, DataError, ValueError, OSError) as e:  # OSError: StorageError too (exit 4)
        return failed("gaheads validate", e)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if report.get("skipped"):
            print(f"skipped {len(report['skipped'])} unreadable or too large images "
                  "(the data loader put the next readable image in their place)")
    for f in files:
        print(f"wrote {f}", file=sys.stderr if args.json else sys.stdout)
    return 0

