#!/usr/bin/env python3
"""The import contract of the gaheads package: layers point one way and no module imports in a cycle.

Usage: ``python tools/check_imports.py [SRC_DIR]`` (default ``src``). Every ``import`` is read
from the source, function-local ones included, so a cycle cannot hide inside a function body.
Exit 0 when the contract holds; otherwise exit 1 and one line per breach. ``make lint`` runs it;
docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "gaheads"

# lower layers never import higher ones; a module may import its own layer (without a cycle).
# Each entry is a module or a subpackage prefix; the longest matching prefix decides.
LAYERS: dict[str, int] = {
    # leaves: no gaheads imports of their own
    "optional": 0, "cpu_memory": 0, "threads": 0, "deprecation": 0,
    "heads": 1,
    "backbones": 2,
    "models": 3,
    "checkpoint": 4, "preprocess": 4, "flops": 4, "loss": 4, "metrics": 4,
    "data": 5, "inference": 5, "export": 5, "attention_maps": 5, "explanation": 5, "diversity": 5,
    "convert": 5, "recipes": 5, "zoo_table": 5,
    "train": 6,
    "cli": 7, "__main__": 7,
}
LAYER_NAMES = {0: "leaf", 1: "heads", 2: "backbones", 3: "models", 4: "checkpoint/preprocess",
               5: "data/inference/export", 6: "train", 7: "cli"}


def module_files(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package except its ``__init__`` faces."""
    out = {}
    for f in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            continue
        out[".".join(parts)] = f
    return out


def imported_modules(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package modules that ``mod`` imports anywhere in its source."""
    here = mod.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            names = [f"{stem}.{a.name}" for a in node.names] + [stem]
        for name in names:
            target = resolve(name, mods)
            if target and target != mod:
                found.add(target)
    return found


def resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module a dotted name refers to: itself, or its longest prefix that is a module."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def layer(mod: str) -> int | None:
    parts = mod.split(".")[1:]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def check(src: Path) -> list[str]:
    """Every breach of the contract, one line each (empty when it holds)."""
    mods = module_files(src)
    graph = {m: imported_modules(m, f, mods) for m, f in mods.items()}
    problems = [f"{m}: not assigned to a layer (add it to LAYERS in tools/check_imports.py)"
                for m in mods if layer(m) is None]
    for m, targets in sorted(graph.items()):
        lm = layer(m)
        for t in sorted(targets):
            lt = layer(t)
            if lm is not None and lt is not None and lt > lm:
                problems.append(f"{m} ({LAYER_NAMES[lm]}) imports {t} ({LAYER_NAMES[lt]}), a higher layer")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return problems


def main(argv: list[str]) -> int:
    src = Path(argv[0] if argv else "src")
    problems = check(src)
    for p in problems:
        print(p)
    n = len(module_files(src))
    print(f"import contract: {len(problems)} breach(es) among {n} modules of {PACKAGE}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
