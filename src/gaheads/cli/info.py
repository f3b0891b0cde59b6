"""``gaheads info MODEL... [--num-classes N] [--img-size N] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from ..flops import count_macs, count_params
from ..models.factory import UnknownModelError, create_model


def model_info(name: str, num_classes: int | None = None, img_size: int | None = None) -> dict[str, Any]:
    """Parameters (total, backbone, heads), GMACs at batch 1, branch count and input size of a model."""
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


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [("model", "model"), ("params", "params"), ("backbone", "backbone_params"), ("heads", "head_params"),
            ("GMACs", "gmacs"), ("branches", "branches"), ("classes", "num_classes"), ("input", "input_size")]

    def cell(row: dict, key: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        if isinstance(v, int) and key.endswith("params"):
            return f"{v:,}"
        if isinstance(v, list):
            return "x".join(map(str, v))
        return str(v)

    table = [[name for name, _ in cols]] + [[cell(r, key) for _, key in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads info", description="Parameters, GMACs (torch's FLOP counter, "
                                "batch 1, MACs = FLOPs/2), branches and input size of models.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's own)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
