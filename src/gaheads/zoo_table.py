"""The table behind ``gaheads models``: every registered model's branches, parameters, GMACs and input.

``zoo_table.json`` (shipped with the package) holds one row per registered model name, counted
on the built model at its own defaults (classes, input size) with ``gaheads.flops``: branches,
params, GMACs (batch 1, MACs = FLOPs / 2), input size, classes and head kind. Reading it costs
no model builds, so listing 100+ models is instant; ``tests/test_models_list.py`` checks it
against freshly built models. Regenerate it after adding or changing a model:

    .venv/bin/python -m gaheads.zoo_table            # rewrites src/gaheads/zoo_table.json
    .venv/bin/python -m gaheads.zoo_table --check    # exit 1 if a registered name is missing
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any

TABLE_FILE = Path(__file__).resolve().parent / "zoo_table.json"
COLUMNS = ("model", "head", "branches", "params", "gmacs", "input_size", "num_classes")


def load_table(path: str | Path = TABLE_FILE) -> list[dict[str, Any]]:
    """The shipped rows, sorted by model name (json only: no torch import)."""
    return json.loads(Path(path).read_text())["models"]


def select(rows: list[dict[str, Any]], pattern: str | None = None) -> list[dict[str, Any]]:
    """Rows whose name matches a shell-style pattern (``*`` around a plain word is implied)."""
    if not pattern:
        return rows
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return [r for r in rows if fnmatch.fnmatch(r["model"], pattern)]


def head_kind(model: Any) -> str:
    """The registered head name of a multi-branch model ('ga', 'seqattn', ...), or '-' for a plain one."""
    from .heads import HEADS

    head = getattr(model, "head", None)
    names = [k for k, cls in HEADS.items() if type(head) is cls and k != "gram"]
    return names[0] if names else "-"


def measure(name: str) -> dict[str, Any]:
    """One row, counted on ``name`` built at its own defaults."""
    import torch

    from .flops import count_macs, count_params
    from .models.factory import create_model

    with torch.no_grad():
        model = create_model(name)
        input_size = tuple(model.pretrained_cfg["input_size"])
        return {"model": name, "head": head_kind(model), "branches": int(getattr(model, "num_branches", 1)),
                "params": count_params(model)["total"], "gmacs": round(count_macs(model, input_size) / 1e9, 4),
                "input_size": list(input_size), "num_classes": int(getattr(model, "num_classes", 0))}


def registered_names() -> list[str]:
    from .models.registry import list_models

    return list_models()


def write_table(path: str | Path = TABLE_FILE, verbose: bool = True) -> list[dict[str, Any]]:
    """Build and count every registered model; write the JSON table; its rows."""
    import torch

    rows = []
    for i, name in enumerate(registered_names(), start=1):
        tick = time.perf_counter()
        rows.append(measure(name))
        if verbose:
            print(f"[{i}] {name}: {rows[-1]['params']:,} params, {rows[-1]['gmacs']} GMACs "
                  f"({time.perf_counter() - tick:.1f} s)", flush=True)
    save_table(rows, path, torch.__version__)
    return rows


def save_table(rows: list[dict[str, Any]], path: str | Path = TABLE_FILE, torch_version: str = "") -> None:
    """Write the rows as JSON, one model per line (diffs stay readable)."""
    head = {"about": "gaheads models: counted on each model built at its defaults (python -m gaheads.zoo_table)",
            "torch": torch_version}
    body = ",\n".join("  " + json.dumps(r) for r in rows)
    Path(path).write_text(json.dumps(head)[:-1] + ', "models": [\n' + body + "\n]}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gaheads.zoo_table", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that every registered name has a row")
    p.add_argument("--output", default=str(TABLE_FILE), help="where to write the table")
    args = p.parse_args(argv)
    if args.check:
        missing = sorted(set(registered_names()) - {r["model"] for r in load_table(args.output)})
        for name in missing:
            print(f"missing from {args.output}: {name}")
        return 1 if missing else 0
    write_table(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
