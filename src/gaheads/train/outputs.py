"""What a training run leaves in its output folder besides checkpoints.

- ``metrics.csv``: one row per epoch (``epoch_columns`` lists the columns);
- ``steps.csv``: the loss every ``--log-interval`` optimizer steps (step, epoch, loss, task_loss,
  decor_loss, lr);
- ``summary.json``: the run's result (see ``engine.Trainer.summary``);
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
