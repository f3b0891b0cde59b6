"""Research-faithful defaults against our earlier choices, on the demo recipe over several seeds.

    .venv/bin/python benchmarks/fidelity_ablations.py --epochs 3 --init-seeds 0 1 2 3 4 --at-seeds 0 1 2

Two comparisons, each on the ``demo`` recipe (mnist5k, 4,000 / 1,000 digits) with the
same seeds for both arms:

- head init of ``seqattn4_cct_2_3x2_32`` (the demo model): ``head_init="release"`` (the head's
  stand-ins of the releases' Conv2d layers keep PyTorch's default Conv2d init, the default) against
  ``head_init="trunc_normal"`` (std 0.02, zero bias, our earlier choice);
- the AT ablation's query on ``at4_cct_2_3x2_32``: ``query="token_linear"`` (as released, the
  default) against ``query="softmax"`` (a content-dependent SeqPool weighting).

The variants are registered under extra names in this process only and trained in-process with
``gaheads.train``'s engine; each run writes a normal run folder under ``--output``. A run whose
summary.json exists is reused. Writes ``results.json`` and prints a Markdown table (held-out
top-1 after the last epoch, mean ± sd over the seeds, and the per-seed paired difference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CONFIG = "demo"  # the recipe make demo trains
# (comparison, model name registered here, base model, model kwargs)
ARMS = {
    "init": [("release", "seqattn4_cct_2_3x2_32", {}),
             ("trunc_normal", "seqattn4_cct_2_3x2_32", {"head_init": "trunc_normal"})],
    "at_query": [("token_linear", "at4_cct_2_3x2_32", {}),
                 ("softmax", "at4_cct_2_3x2_32", {"query": "softmax"})],
}


def register_variant(base: str, suffix: str, kwargs: dict) -> str:
    """Register ``base`` with ``kwargs`` fixed under ``<base>_<suffix>``; returns that name."""
    import timm

    from gaheads.models import cct
    from gaheads.models.registry import register

    name = f"{base}_{suffix}"
    if not timm.is_model(name):
        src = timm.models.get_pretrained_cfg(base).to_dict()
        arch = base.split("_", 1)[1]
        kind_k = base.split("_", 1)[0]
        kind = kind_k.rstrip("0123456789")
        register(cct.__name__, name, cct.CCTModel, src, head=kind, num_branches=int(kind_k[len(kind):]),
                 **cct.CCT_ARCHS[arch], **kwargs)
    return name


def run(model: str, seed: int, epochs: int, out: Path) -> dict:
    from gaheads.train.config import parse_args
    from gaheads.train.engine import train

    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    args = parse_args(["-c", CONFIG, "--model", model, "--epochs", str(epochs), "--seed", str(seed),
                       "--output", str(out), "--no-progress"])
    start = time.perf_counter()
    result = train(args)
    print(f"{model} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return result


def top1(summary: dict) -> float:
    for key in ("top1", "final_top1", "last_top1"):
        if key in summary:
            return float(summary[key])
    return float(summary["final"]["top1"])


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--init-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    p.add_argument("--at-seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--output", default="runs/fidelity")
    args = p.parse_args()
    results: dict = {"epochs": args.epochs, "config": CONFIG}
    out = Path(args.output)
    for comparison, seeds in (("init", args.init_seeds), ("at_query", args.at_seeds)):
        if not seeds:  # e.g. --init-seeds with no values: run only the other comparison
            continue
        names = {arm: register_variant(base, arm, kwargs) for arm, base, kwargs in ARMS[comparison]}
        rows: dict[str, list[float]] = {arm: [] for arm in names}
        for s in seeds:  # seed by seed, both arms: an interrupted study still holds paired results
            for arm, name in names.items():
                rows[arm].append(top1(run(name, s, args.epochs, out / comparison / f"{arm}-seed{s}")))
        (a, xs), (b, ys) = rows.items()
        diffs = [x - y for x, y in zip(xs, ys)]
        results[comparison] = {"seeds": seeds, a: xs, b: ys, "difference": diffs}
        print(f"\n{comparison} ({args.epochs} epochs, seeds {seeds})")
        print("| arm | top-1 per seed | mean ± sd |\n|---|---|---|")
        for arm, vals in rows.items():
            print(f"| {arm} | {' / '.join(f'{v:.1f}' for v in vals)} | {mean_sd(vals)} |")
        print(f"| {a} − {b} | {' / '.join(f'{d:+.1f}' for d in diffs)} | {mean_sd(diffs)} |")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
