"""How different the K branches are over a dataset: the measurement behind the decorrelation loss.

Two K x K matrices, accumulated batch by batch (sums in float64, so ranks or batches can be
added up and the result does not depend on the batch size):

- **pairwise agreement** A[i, j]: the percentage of samples on which branch i and branch j
  predict the same class (argmax of their logits). A[i, i] = 100.
- **probability correlation** R[i, j]: the Pearson correlation between branch i's and
  branch j's softmax probabilities, taken over every (sample, class) pair of the set:
  with p_k(x, c) = softmax(logits_k(x))_c and all N samples x and n classes c as N·n
  paired observations, R[i, j] = cov(p_i, p_j) / (std(p_i) · std(p_j)). R[i, i] = 1.
  Two branches that put the same probability on the same classes of every sample give 1;
  the lower R, the more the branches spread their probability mass differently.
- **log-probability correlation** L[i, j]: the same over log-softmax values. R is dominated by
  the few large probabilities (the predicted class), so on easy data it sits near 1 whatever
  the branches do with the other classes; L weighs every class's log-odds alike, which is
  where the decorrelation loss's KL(p̄ ‖ p_k) acts once the branches agree on the top class.

``mean_offdiag`` of either matrix (the mean over i != j) is the one-number summary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def mean_offdiag(m: torch.Tensor) -> float | None:
    """Mean of the off-diagonal entries of a square matrix (None for 1 x 1: there are no pairs)."""
    k = m.shape[0]
    if k < 2:
        return None
    mask = ~torch.eye(k, dtype=torch.bool, device=m.device)
    return float(m[mask].mean())


class BranchDiversity:
    """Accumulates pairwise agreement and probability correlation of K branches; see the module doc.

    ``update(logits (B, K, n))``; ``all_reduce()`` sums over DDP ranks; ``compute()`` returns
    ``agreement``, ``correlation`` and ``logprob_correlation`` as K x K nested lists, their
    off-diagonal means ``mean_agreement``, ``mean_correlation`` and ``mean_logprob_correlation``,
    and ``samples``.
    """

    def __init__(self, num_branches: int, device: torch.device | str = "cpu") -> None:
        k = self.k = num_branches
        f64 = dict(dtype=torch.float64, device=device)
        self.same = torch.zeros(k, k, **f64)  # samples on which branch i and j agree
        # row 0: probabilities, row 1: log-probabilities; Σ v_k and Σ v_i v_j over (sample, class) pairs
        self.v_sum = torch.zeros(2, k, **f64)
        self.v_outer = torch.zeros(2, k, k, **f64)
        self.counts = torch.zeros(2, **f64)  # samples, (sample, class) pairs

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        if logits.ndim != 3 or logits.shape[1] != self.k:
            raise ValueError(f"expected branch logits (B, {self.k}, n), got shape {tuple(logits.shape)}")
        b, k, n = logits.shape
        pred = logits.argmax(dim=-1)  # (B, K)
        self.same += (pred[:, :, None] == pred[:, None, :]).sum(0).double()
        logp = logits.double().log_softmax(dim=-1).permute(1, 0, 2).reshape(k, b * n)  # (K, B·n)
        v = torch.stack((logp.exp(), logp))  # (2, K, B·n)
        self.v_sum += v.sum(dim=2)
        self.v_outer += v @ v.transpose(1, 2)
        self.counts += torch.tensor([b, b * n], dtype=torch.float64, device=self.counts.device)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for t in (self.same, self.v_sum, self.v_outer, self.counts):
                dist.all_reduce(t)

    @property
    def samples(self) -> int:
        return int(self.counts[0].item())

    def agreement(self) -> torch.Tensor:
        """K x K percentage of samples where branches i and j have the same top-1 class."""
        return self.same / self.counts[0].clamp(min=1) * 100

    def correlation(self, log: bool = False) -> torch.Tensor:
        """K x K Pearson correlation of branch probabilities (``log``: log-probabilities) over all
        (sample, class) pairs."""
        m = self.counts[1].clamp(min=1)
        mean = self.v_sum[int(log)] / m
        cov = self.v_outer[int(log)] / m - mean[:, None] * mean[None, :]
        std = cov.diagonal().clamp(min=0).sqrt()
        return cov / (std[:, None] * std[None, :]).clamp(min=1e-30)

    def compute(self) -> dict[str, Any]:
        agree, corr, log_corr = self.agreement(), self.correlation(), self.correlation(log=True)
        return {"agreement": agree.tolist(), "correlation": corr.tolist(), "logprob_correlation": log_corr.tolist(),
                "mean_agreement": mean_offdiag(agree), "mean_correlation": mean_offdiag(corr),
                "mean_logprob_correlation": mean_offdiag(log_corr), "samples": self.samples}


# the narrowest colour range of each heatmap: differences smaller than this are drawn as (almost) one
# colour, so 0.9964 vs 0.9977 do not look like opposite extremes; (floor, lowest, highest valid value)
COLOUR_SPAN = {"agreement": (10.0, 0.0, 100.0), "correlation": (0.05, -1.0, 1.0)}


def colour_range(values: torch.Tensor, kind: str) -> tuple[float, float]:
    """(vmin, vmax) for a heatmap of ``values``: their spread, widened to at least the kind's floor
    (``COLOUR_SPAN``) around their middle and kept inside the valid range."""
    floor, low, high = COLOUR_SPAN[kind]
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, floor)
    mid = (lo + hi) / 2
    vmin, vmax = mid - span / 2, mid + span / 2
    if vmax > high:
        vmin, vmax = vmin - (vmax - high), high
    if vmin < low:
        vmin, vmax = low, vmax + (low - vmin)
    return vmin, min(vmax, high)


def plot_diversity(report: dict[str, Any], path: str, title: str = "") -> None:
    """Heatmaps of agreement and correlations, and per-branch vs ensemble top-1, as one PNG.

    ``report`` holds ``agreement``, ``correlation`` (K x K), optionally ``logprob_correlation``,
    ``branch_top1`` (K) and ``top1``. Each heatmap's colours span its off-diagonal values, widened
    to a minimum range (:func:`colour_range`), and every pair's value is printed in its cell. With
    one branch there are no pairs: only the accuracy panel is drawn, and says so.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    agree = torch.tensor(report["agreement"], dtype=torch.float64)
    k = agree.shape[0]
    labels = [f"b{i}" for i in range(k)]
    panels = []
    if k > 1:
        off = ~torch.eye(k, dtype=torch.bool)
        mats = [("agreement", agree, "top-1 agreement %", "%.1f", "agreement")]
        mats.append(("correlation", torch.tensor(report["correlation"], dtype=torch.float64),
                     "probability correlation", "%.4f", "correlation"))
        if "logprob_correlation" in report:
            mats.append(("logprob_correlation", torch.tensor(report["logprob_correlation"], dtype=torch.float64),
                         "log-prob. correlation", "%.4f", "correlation"))
        for _, mat, name, fmt, kind in mats:
            vals = mat[off]
            fmt_ = "%.1f" if kind == "agreement" else fmt
            panels.append((mat, f"{name}\nmean {fmt_ % float(vals.mean())}, pairs {fmt_ % float(vals.min())} to "
                                f"{fmt_ % float(vals.max())}", fmt, colour_range(vals, kind)))
    fig = Figure(figsize=(4.4 * (len(panels) + 1), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels) + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1] * len(panels) + [1.1]})[0]
    for ax, (mat, name, fmt, (lo, hi)) in zip(axes, panels):
        # the diagonal (trivially 100 % / 1) is left blank so it does not set the colours
        shown = mat.clone().masked_fill(torch.eye(k, dtype=torch.bool), float("nan"))
        im = ax.imshow(shown.numpy(), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(k), labels)
        ax.set_yticks(range(k), labels)
        if k <= 10:
            for i in range(k):
                for j in range(k):
                    if i != j:
                        v = float(mat[i, j])
                        ax.text(j, i, fmt % v, ha="center", va="center", fontsize=7 if k <= 6 else 6,
                                color="black" if v > lo + 0.6 * (hi - lo) else "white")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[-1]
    ax.bar(labels, report["branch_top1"], color="tab:blue", label="branch")
    ax.axhline(report["top1"], color="tab:red", linestyle="--", label=f"ensemble {report['top1']:.2f}")
    for i, v in enumerate(report["branch_top1"]):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    low = min(min(report["branch_top1"]), report["top1"])
    ax.set_ylim(max(0.0, low - max(2.0, 0.2 * (100 - low))), 100)
    ax.set_ylabel("top-1 %")
    if k == 1:
        ax.set_title("top-1 %: 1 branch (no pairs of branches to compare)", fontsize=9)
    else:
        ax.set_title(f"top-1 %: each of {k} branches vs ensemble", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
