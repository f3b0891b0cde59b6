"""``gaheads info MODEL... [--num-classes N] [--img-size N] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def model_info(name: str, num_classes: int | None = None, img_size: int | None = None) -> dict[str, Any]:
    """Parameters (total, backbone, heads), GMACs at batch 1, branch count and input size of a model."""
    from ..flops import count_macs, count_params
    from ..models.factory import create_model

    model = create_model(name, num_classes=num_classes, img_size=img_size)
    input_size = tuple(model.pretrained_cfg["input_size"])
    if img_size is not None:
        input_size = (input_size[0], img_size, img_size)
    params = count_params(model)
    return {
        "model": name,
        "num_classes": getattr(model, "num_classes", num_classes),
        "params": params["total"],
        "backbone_params": params.get("backbone"),
        "head_params": params.get("heads"),
        "gmacs": round(count_macs(model, input_size) / 1e9, 4),
        "branches": getattr(model, "num_branches", 1),
        "input_size": list(input_size),
    }


INFO_COLUMNS = [("model", "model"), ("params", "params"), ("backbone", "backbone_params"), ("heads", "head_params"),
                ("GMACs", "gmacs"), ("branches", "branches"), ("classes", "num_classes"), ("input", "input_size")]
LIST_COLUMNS = [("model", "model"), ("head", "head"), ("branches", "branches"), ("params", "params"),
                ("GMACs", "gmacs"), ("input", "input_size"), ("classes", "num_classes")]
PAPER_COLUMNS = [("row", "group"), ("model", "model"), ("published row", "published"),
                 ("release alias", "release_alias"),
                 ("paper params (M)", "paper_params_m"), ("paper GFLOPs", "paper_gflops"),
                 ("ref params", "ref_params"), ("ref GMACs", "ref_gmacs"), ("our params", "params"),
                 ("our GMACs", "gmacs"), ("vs", "compared_to"), ("d params", "params_diff_pct"),
                 ("d GMACs", "gmacs_diff_pct")]


def select_paper_rows(models: list[str] | None = None) -> list[tuple[str, Any]]:
    """(group, PublishedRow) pairs: all of them, or those whose model or release alias is in ``models``."""
    from ..models.factory import UnknownModelError
    from ..models.zoo import BASELINE_ROWS, GA_ROWS

    table = [("GA", r) for r in GA_ROWS] + [("baseline", r) for r in BASELINE_ROWS]
    if not models:
        return table
    known = {r.model for _, r in table} | {r.release_alias for _, r in table if r.release_alias}
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UnknownModelError(f"no published row for {', '.join(unknown)}; rows: "
                                f"{', '.join(r.model for _, r in table)}")
    return [(g, r) for g, r in table if r.model in models or r.release_alias in models]


def paper_rows(models: list[str] | None = None) -> list[dict[str, Any]]:
    """The GA paper's Table 3 rows and the baselines with our counts (1000 classes, 224x224).

    ``params_diff_pct`` / ``gmacs_diff_pct`` compare ours with the research code's measured
    figures where they were measured ("ref"), else with the paper's printed ones ("paper").
    """
    rows = []
    for group, row in select_paper_rows(models):
        ours = model_info(row.model, num_classes=1000)
        if row.ref_params is not None:
            basis, params_ref, gmacs_ref = "ref", row.ref_params, row.ref_gmacs
        else:
            basis, params_ref, gmacs_ref = "paper", row.paper_params_m * 1e6, row.paper_gflops
        rows.append({"group": group, **row.as_dict(), "params": ours["params"], "gmacs": ours["gmacs"],
                     "compared_to": basis, "params_diff_pct": round(100 * (ours["params"] / params_ref - 1), 2),
                     "gmacs_diff_pct": round(100 * (ours["gmacs"] / gmacs_ref - 1), 2)})
    return rows


def format_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]] = INFO_COLUMNS, text_cols: int = 1) -> str:
    """A plain-text table; the first ``text_cols`` columns are left-aligned, the rest right-aligned."""
    def cell(row: dict, key: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        if isinstance(v, int) and key.endswith("params"):
            return f"{v:,}"
        if key.endswith("_pct"):
            return f"{v:+.2f}%"
        if isinstance(v, list):
            return "x".join(map(str, v))
        return str(v)

    table = [[name for name, _ in cols]] + [[cell(r, key) for _, key in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i < text_cols else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads info", description="Parameters, GMACs (torch's FLOP counter, "
                                "batch 1, MACs = FLOPs/2), branches and input size of models.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="registered model names (with --paper: "
                   "restrict the table to these rows)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's own)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--paper", action="store_true", help="the GA paper's Table 3 and baselines (params, GFLOPs) "
                   "side by side with ours, at 1000 classes and 224x224")
    p.epilog = "With no MODEL: the registered models, as gaheads models lists them."
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.paper:
        return _main_paper(args)
    if not args.models:  # nothing to build: the registered models, from the table (gaheads models)
        from ..zoo_table import load_table

        print("gaheads info: no MODEL named; the registered models follow (gaheads models [PATTERN]; "
              "gaheads info MODEL... builds and counts them)", file=sys.stderr)
        rows = load_table()
        print(json.dumps(rows, indent=2) if args.json else format_table(rows, LIST_COLUMNS, text_cols=2))
        return 0
    import torch

    from ..models.factory import UnknownModelError

    rows = []
    for name in args.models:
        try:
            with torch.no_grad():
                rows.append(model_info(name, args.num_classes, args.img_size))
        except UnknownModelError as e:
            print(f"gaheads info: {e}", file=sys.stderr)
            return 2
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _main_paper(args: argparse.Namespace) -> int:
    if args.num_classes is not None or args.img_size is not None:
        print("gaheads info: --paper compares at 1000 classes and 224x224; drop --num-classes/--img-size",
              file=sys.stderr)
        return 2
    import torch

    from ..models.factory import UnknownModelError

    try:
        with torch.no_grad():
            rows = paper_rows(args.models)
    except UnknownModelError as e:
        print(f"gaheads info: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, PAPER_COLUMNS, text_cols=4))
    return 0
