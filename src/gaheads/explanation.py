"""What each branch looks at: per-branch class-attention maps of one image, and GA gram similarities.

For a head with class attention (ga, seqattn, at) a branch's map is its query token's
attention over the spatial tokens, averaged over the attention heads, laid on the token grid
and upsampled (bilinear) onto the model's input image. The weights over [query, tokens]
sum to 1 per attention head; what a map does not show is the query's attention to itself
(``self_attention``). A SeqPool head has no class attention, but its softmax token weights
are an attention map and are shown instead. For heads built on a gram vector (ga, sg) the
K x K cosine similarity of the branches' gram vectors says how different their queries are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import GramEmbedding, SeqPoolHead, to_tokens
from .inference import ImageInput, class_name
from .preprocess import eval_transform, open_image, resolve_data_config, to_rgb


class ExplainError(ValueError):
    """A model or image that cannot be explained (no branch head, tokens not on a grid)."""


@dataclass
class Explanation:
    """Everything drawn by ``figure()``; tensors are on the CPU.

    image: (H, W, 3) the preprocessed input, un-normalised to [0, 1] (what the model saw).
    attention: (K, heads, 1+N) class-attention weights (column 0: the query itself), or None.
    token_attention: (K, N) attention over the spatial tokens, mean over heads (SeqPool: its
        token weights), or None when the head has neither.
    maps: (K, H, W) ``token_attention`` upsampled onto the image, or None.
    grid: (h, w) token grid; branch_top: per branch (class name, probability);
    ensemble_top: (class name, probability); gram_similarity: (K, K) cosine similarity of the
    branches' gram vectors, or None; kind: "class attention", "seqpool weights" or None.
    """

    image: torch.Tensor
    attention: torch.Tensor | None
    token_attention: torch.Tensor | None
    maps: torch.Tensor | None
    grid: tuple[int, int]
    branch_top: list[tuple[str, float]]
    ensemble_top: tuple[str, float]
    gram_similarity: torch.Tensor | None
    kind: str | None
    head_name: str

    @property
    def self_attention(self) -> torch.Tensor | None:
        """(K,) each branch's query attention to itself, mean over heads."""
        return None if self.attention is None else self.attention[:, :, 0].mean(dim=1)

    @property
    def message(self) -> str | None:
        """Why there are no maps, for heads without any attention."""
        if self.maps is not None:
            return None
        return f"the {self.head_name} head has no attention over the image; showing its predictions" + (
            " and gram similarity" if self.gram_similarity is not None else "")

    def figure(self):
        """A matplotlib Figure: the image (ensemble top class), one map per branch, gram similarity.

        The maps share one colour bar (each map is scaled to its own peak); a footnote says what
        a branch title's "self N%" is. Built with matplotlib's object API (no pyplot, no backend
        switch), so it can be drawn in any process.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure

        k = len(self.branch_top)
        n_panels = 1 + (k if self.maps is not None else 0) + (self.gram_similarity is not None)
        cols = min(n_panels, 5)
        rows = -(-n_panels // cols)
        fig = Figure(figsize=(2.7 * cols + 0.8, 2.8 * rows + 0.8), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False)
        panels = iter(axes.flat)
        img = self.image.numpy()
        ax = next(panels)
        ax.imshow(img)
        name, prob = self.ensemble_top
        ax.set_title(f"ensemble: {name} ({prob:.0%})", fontsize=9)
        map_axes = []
        if self.maps is None:
            ax.set_xlabel("\n".join(f"b{i}: {c} ({p:.0%})" for i, (c, p) in enumerate(self.branch_top)), fontsize=8)
        else:
            for i in range(k):
                ax = next(panels)
                map_axes.append(ax)
                ax.imshow(img)
                ax.imshow(self.maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                c, p = self.branch_top[i]
                extra = f", self {float(self.self_attention[i]):.0%}" if self.attention is not None else ""
                ax.set_title(f"b{i}: {c} ({p:.0%}{extra})", fontsize=9)
        if self.gram_similarity is not None:
            ax = next(panels)
            im = ax.imshow(self.gram_similarity.numpy(), cmap="viridis", vmin=-1, vmax=1)
            ax.set_title("gram vector cosine sim.", fontsize=9)
            ax.set_xticks(range(k), [f"b{i}" for i in range(k)], fontsize=7)
            ax.set_yticks(range(k), [f"b{i}" for i in range(k)], fontsize=7)
            if k <= 8:
                for i in range(k):
                    for j in range(k):
                        ax.text(j, i, f"{float(self.gram_similarity[i, j]):.2f}", ha="center", va="center",
                                fontsize=7, color="black" if self.gram_similarity[i, j] > 0.2 else "white")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for ax in axes.flat[:n_panels - (self.gram_similarity is not None)]:  # image panels: no ticks
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in panels:  # unused grid cells
            ax.axis("off")
        branches = f"{k} branch{'es' if k != 1 else ''}"
        fig.suptitle(f"{self.head_name} head, {branches}" + (f" — {self.kind} maps" if self.kind else ""), fontsize=10)
        notes = []
        if map_axes:
            bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), ax=map_axes, fraction=0.03, pad=0.02)
            bar.set_label("attention / the map's peak", fontsize=8)
            notes.append("maps: each branch's attention over the image tokens (mean over heads), scaled to its peak")
        if self.attention is not None:
            notes.append('"self N%": the share of its attention the branch\'s query token keeps on itself '
                         "(not drawn; the map shows the rest)")
        if notes:
            fig.supxlabel("\n".join(notes), fontsize=7)
        return fig

    def save(self, path: str | Path) -> Path:
        """Write the figure as a PNG."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=120)
        return path


def token_grid(features: torch.Tensor) -> tuple[int, int]:
    """The (h, w) grid of a feature map (B, C, h, w) or of N square-laid tokens (B, N, C)."""
    tokens, hw = to_tokens(features)
    if hw[0] * hw[1] != tokens.shape[1] or (features.ndim == 3 and hw[0] == 1 and tokens.shape[1] > 1):
        raise ExplainError(f"cannot lay {tokens.shape[1]} tokens on a square grid to draw attention maps")
    return hw


def _prepare(model: nn.Module, image: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
    """-> model input (1, 3, H, W) and the image it shows, (H, W, 3) in [0, 1]."""
    cfg = resolve_data_config(model)
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image.unsqueeze(0)
        if x.shape[0] != 1:
            raise ExplainError(f"explain takes one image, got a batch of {x.shape[0]}")
    else:
        img = to_rgb(image) if hasattr(image, "mode") else open_image(image)  # the reader validate and predict use
        x = eval_transform(cfg)(img).unsqueeze(0)
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    shown = (x[0].float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0)
    return x, shown


@torch.no_grad()
def explain(model: nn.Module, image: ImageInput, output: str | Path | None = None) -> Explanation:
    """Per-branch attention maps, top classes and gram similarities of one image; a PNG if ``output``.

    image: a path, a PIL image (any mode), or a preprocessed tensor (3, H, W) / (1, 3, H, W).
    """
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "forward_with_attention"):
        raise ExplainError(f"{type(model).__name__} has no gaheads multi-branch head to explain")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x, shown = _prepare(model, image)
        features = model.forward_features(x.to(device))
        logits, attn = head.forward_with_attention(features)  # (1, K, n), (1, K, heads, 1+N) or None
        tokens, hw = to_tokens(features)
        token_attn, kind = None, None
        if attn is not None:
            token_attn, kind = attn[0, :, :, 1:].mean(dim=1), "class attention"
        elif isinstance(head, SeqPoolHead):
            token_attn, kind = head.pooling.score(tokens)[0].softmax(dim=0).T, "seqpool weights"  # (K, N)
        maps = None
        if token_attn is not None:
            hw = token_grid(features)
            grid_maps = token_attn.float().reshape(-1, 1, *hw)
            maps = F.interpolate(grid_maps, size=tuple(shown.shape[:2]), mode="bilinear", align_corners=False)[:, 0]
            # each map scaled to [0, 1] for display: the branches' peaks differ in height, not in meaning
            maps = maps / maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
        gram_sim = None
        query = getattr(head, "query", None)
        if isinstance(query, GramEmbedding):
            g = query.gram(tokens, hw)[0]  # (K, d(d+1)/2), L2-normalised
            gram_sim = g @ g.T
        probs = logits[0].float().softmax(dim=-1)  # (K, n)
        ens = logits[0].float().mean(dim=0).softmax(dim=-1)
        branch_top = [(class_name(model, int(i)), float(p)) for p, i in zip(*probs.max(dim=-1))]
        ens_p, ens_i = ens.max(dim=-1)
        result = Explanation(
            image=shown, attention=None if attn is None else attn[0].float().cpu(),
            token_attention=None if token_attn is None else token_attn.float().cpu(),
            maps=None if maps is None else maps.cpu(), grid=tuple(hw),
            branch_top=branch_top, ensemble_top=(class_name(model, int(ens_i)), float(ens_p)),
            gram_similarity=None if gram_sim is None else gram_sim.cpu(), kind=kind,
            head_name=_head_name(head))
    finally:
        model.train(was_training)
    if output is not None:
        result.save(output)
    return result


def _head_name(head: nn.Module) -> str:
    from .heads import HEADS

    names = [k for k, cls in HEADS.items() if type(head) is cls and k != "gram"]
    return names[0] if names else type(head).__name__


def describe(result: Explanation) -> dict[str, Any]:
    """A JSON-safe summary: top classes, self-attention and gram similarity per branch."""
    out: dict[str, Any] = {"head": result.head_name, "kind": result.kind, "grid": list(result.grid),
                           "ensemble": {"class": result.ensemble_top[0], "prob": result.ensemble_top[1]},
                           "branches": [{"class": c, "prob": p} for c, p in result.branch_top]}
    if result.self_attention is not None:
        for b, s in zip(out["branches"], result.self_attention.tolist()):
            b["self_attention"] = s
    if result.gram_similarity is not None:
        out["gram_similarity"] = result.gram_similarity.tolist()
    return out
