"""What a training run reports besides checkpoints: its output-folder files and its console lines.

``RunLog`` decides what is written when; the functions below write the files.

- ``metrics.csv``: one row per epoch (``epoch_columns`` lists the columns);
- ``steps.csv``: the loss every ``--log-interval`` optimizer steps (step, epoch, loss, task_loss,
  decor_loss, lr);
- ``summary.json``: the run's result (``RunLog.summary``);
- ``curves.png``: training losses and held-out accuracy per epoch.

Every file is written whole and atomically, so a reader never sees half a table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write, storage_error
from .config import PROG

STEP_COLUMNS = ("step", "epoch", "loss", "task_loss", "decor_loss", "lr")


def epoch_columns(num_branches: int, ema: bool) -> list[str]:
    """metrics.csv columns: losses, ensemble and per-branch top-1/top-5, branch agreement, lr, timing."""
    cols = ["epoch", "loss", "task_loss", "decor_loss", "top1", "top5"]
    cols += [f"branch_top1_{k}" for k in range(num_branches)]
    cols += [f"branch_top5_{k}" for k in range(num_branches)]
    cols += ["agreement"]
    if ema:
        cols += ["model_top1", "model_top5"]  # the raw (non-EMA) weights; top1/top5 are the EMA's
    cols += ["eval_samples", "lr", "epoch_seconds", "eval_seconds", "img_per_sec", "skipped_steps", "skipped_images"]
    return cols


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _fmt(row.get(k)) for k in columns})
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    # repr keeps full float precision, so two runs compare exactly
    return repr(v) if isinstance(v, float) else v


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    text = _csv_text(columns, rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically; StorageError (one line, free space) on a storage fault."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log such as steps.csv); StorageError on a storage fault."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        raise storage_error(path, e) from e


def plot_curves(path: Path, rows: Sequence[Mapping[str, Any]], num_branches: int, title: str = "") -> None:
    """curves.png: left, train loss / task / decorrelation per epoch; right, ensemble and branch top-1.

    ``title`` (e.g. "seqattn4_cct_2_3x2_32 on mnist5k — runs/demo") heads the figure. The total
    loss is drawn over the task loss, dashed, so it stays visible where the two coincide (the
    decorrelation term is small, and 0 for one branch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4.4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    lines = ax_loss.plot(epochs, [r.get("task_loss") for r in rows], lw=4, alpha=0.45, color="tab:orange",
                         label="task loss (Σ over branches)")
    lines += ax_loss.plot(epochs, [r.get("loss") for r in rows], ls="--", lw=1.5, marker="o", ms=3,
                          color="tab:blue", label="total loss = task + λ·decorrelation", zorder=3)
    decor = [r.get("decor_loss") for r in rows]
    if num_branches > 1 and any(v is not None and math.isfinite(v) for v in decor):
        # orders of magnitude below the task loss: its own axis, or it is a flat line at 0
        ax_decor = ax_loss.twinx()
        lines += ax_decor.plot(epochs, decor, marker="s", ms=3, color="tab:green", label="decorrelation Σ KL (right)")
        ax_decor.set_ylabel("Σ_k KL(p̄ ‖ p_k)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(lines, [ln.get_label() for ln in lines], fontsize="small")
    if num_branches > 1:
        for k in range(num_branches):
            ax_acc.plot(epochs, [r.get(f"branch_top1_{k}") for r in rows], lw=1, alpha=0.6, label=f"branch {k}")
    ax_acc.plot(epochs, [r["top1"] for r in rows], marker="o", ms=3, lw=2, color="black", label="ensemble top-1")
    ax_acc.plot(epochs, [r["top5"] for r in rows], ls="--", color="gray", label="ensemble top-5")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("%")
    last = rows[-1] if rows else {}
    ax_acc.set_title("held-out accuracy" + (f" (last: top-1 {last['top1']:.2f}%)" if "top1" in last else ""))
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize="small", ncol=2 if num_branches > 4 else 1)
    branches = f"{num_branches} branch{'es' if num_branches != 1 else ''}"
    fig.suptitle(f"{title} ({branches})" if title else branches, fontsize=10)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    atomic_write(path, write)


class RunLog:
    """The files and console lines of one run in ``out``; only rank 0 (``main``) writes or prints.

    ``title`` heads curves.png; ``epochs``: the run's total, for "epoch 3/10".
    """

    def __init__(self, out: Path, main: bool, num_branches: int, ema: bool, epochs: int, title: str = "") -> None:
        self.out, self.main, self.num_branches, self.ema, self.epochs, self.title = \
            out, main, num_branches, ema, epochs, title

    def say(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def start_steps(self, resumed: bool, step: int) -> None:
        """steps.csv: fresh on a new run; on resume keep only the rows up to the resumed ``step``."""
        if not self.main:
            return
        path = self.out / "steps.csv"
        rows: list[str] = []
        if resumed and path.is_file():
            for line in path.read_text().splitlines()[1:]:
                fields = line.split(",")
                if len(fields) == len(STEP_COLUMNS) and fields[0].isdigit() and int(fields[0]) <= step:
                    rows.append(line)
        write_text(path, "\n".join([",".join(STEP_COLUMNS), *rows]) + "\n")

    def step(self, step: int, epoch: int, losses: Sequence[float], lr: float) -> None:
        """One steps.csv row: optimizer ``step``, 0-based ``epoch``, the all-rank mean (loss, task, decor)."""
        if self.main:
            values = (step, epoch + 1, *losses, lr)
            append_text(self.out / "steps.csv", ",".join(_fmt(v) if isinstance(v, float) else str(v)
                                                         for v in values) + "\n")

    def end_epoch(self, history: Sequence[Mapping[str, Any]]) -> None:
        """metrics.csv and curves.png, rewritten whole with every epoch so far."""
        if self.main:
            write_csv(self.out / "metrics.csv", epoch_columns(self.num_branches, self.ema), history)
            plot_curves(self.out / "curves.png", history, self.num_branches, title=self.title)

    def epoch_line(self, row: Mapping[str, Any]) -> str:
        """The console line of a finished epoch's metrics ``row``."""
        k = self.num_branches
        branches = ""
        if k > 1:
            branches = " branches [" + " ".join(f"{row[f'branch_top1_{i}']:.1f}" for i in range(k)) + "]"
        return (f"{PROG}: epoch {row['epoch']}/{self.epochs} loss {row['loss']:.4f} (task {row['task_loss']:.4f}, "
                f"decor {row['decor_loss']:.4f}) top-1 {row['top1']:.2f} top-5 {row['top5']:.2f}{branches} "
                f"lr {row['lr']:.2e} {row['epoch_seconds']:.1f}s {row['img_per_sec']:.0f} img/s"
                + (f"; {row['skipped_images']} unreadable image(s) skipped so far" if row["skipped_images"] else ""))

    def summary(self, last: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
        """summary.json's dict, from the last epoch's metrics ``last`` and the run's facts ``run``
        (model, dataset, epochs, best_top1, best_epoch, train_seconds, params, num_classes, weights,
        steps, skipped_steps, skipped_files, world_size, seed, GA_lam)."""
        k, out = self.num_branches, self.out
        return {
            "model": run["model"], "dataset": run["dataset"], "epochs": run["epochs"],
            "final_top1": last["top1"], "final_top5": last["top5"],
            "best_top1": run["best_top1"], "best_epoch": run["best_epoch"], "train_seconds": run["train_seconds"],
            "branch_top1": [last[f"branch_top1_{i}"] for i in range(k)],
            "branch_top5": [last[f"branch_top5_{i}"] for i in range(k)],
            "agreement": last["agreement"], "eval_samples": last["eval_samples"],
            "params": run["params"], "num_branches": k, "num_classes": run["num_classes"],
            "weights": run["weights"], "steps": run["steps"],
            "skipped_steps": run["skipped_steps"], "skipped_images": len(run["skipped_files"]),
            "skipped_files": run["skipped_files"][:1000], "world_size": run["world_size"], "seed": run["seed"],
            "GA_lam": run["GA_lam"], "img_per_sec": last["img_per_sec"], "output": str(out),
            "checkpoint": str(out / "last.pth"), "best_checkpoint": str(out / "best.pth"),
            "weights_file": str(out / "model.safetensors"), "curves": str(out / "curves.png"),
        }

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.main:
            write_json(self.out / "summary.json", summary)

    def done_line(self, s: Mapping[str, Any]) -> str:
        """The run's closing lines, from its ``summary``."""
        out = self.out
        return (f"{PROG}: done: held-out top-1 {s['final_top1']:.2f}% (top-5 {s['final_top5']:.2f}%) on "
                f"{s['eval_samples']} images after {s['epochs']} epochs, {s['train_seconds']:.1f} s of training"
                f"\n  checkpoint: {out / 'last.pth'} (best: {out / 'best.pth'}, epoch {s['best_epoch']}, "
                f"top-1 {s['best_top1']:.2f}%)\n  weights:    {out / 'model.safetensors'} (+ model.json"
                f", {s['weights']} weights)\n  curves:     {out / 'curves.png'}"
                f"\n  metrics:    {out / 'metrics.csv'}, {out / 'summary.json'}")
