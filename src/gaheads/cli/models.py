"""``gaheads models [PATTERN] [--json]``: every registered model, from the shipped table (no model is built).

Columns: name, head kind, branches, parameters, GMACs (batch 1, at the model's input size),
input size and classes, all at each model's own defaults (``gaheads.zoo_table``). Any other
timm model takes heads as ``<head><K>@<timm model>``; ``gaheads info NAME`` builds and counts
one at other classes or sizes.
"""

from __future__ import annotations

import argparse
import json
import sys

# the head kinds a pattern name may use (gaheads.heads.HEADS; a test keeps the two equal)
PATTERN_HEADS = ("ga", "gram", "seqattn", "seqpool", "sg", "at")
PATTERN_HELP = (f"Any timm model with K branches of a head: <head><K>@<timm model>, head one of "
                f"{', '.join(PATTERN_HEADS)}; e.g. ga5@resnet18, seqattn4@convnext_tiny, ga2@vit_tiny_patch16_384 "
                "(the backbone's own input size, mean/std and crop are used). gaheads info NAME counts any of them.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads models", description="Every registered model with its branches, "
                                "parameters, GMACs and input size (from a table: instant).", epilog=PATTERN_HELP)
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN",
                   help="shell-style filter, e.g. 'ga*_cct_7*' or a plain substring such as convnext")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..zoo_table import load_table, select
    from .info import LIST_COLUMNS, format_table

    rows = select(load_table(), args.pattern)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if rows else 1
    if not rows:
        print(f"gaheads models: no registered model matches {args.pattern!r}", file=sys.stderr)
        print(PATTERN_HELP, file=sys.stderr)
        return 1
    print(format_table(rows, LIST_COLUMNS, text_cols=2))
    print(f"\n{len(rows)} model(s). {PATTERN_HELP}")
    return 0
