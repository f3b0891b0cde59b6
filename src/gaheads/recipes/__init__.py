"""Named training recipes shipped with gaheads: YAML files of ``gaheads train`` flag values.

``gaheads train DATA -c small`` reads ``small.yaml`` from this folder; ``-c FILE.yaml`` reads
any file. The first line of each recipe is a ``# one-line description`` (``gaheads recipes``
prints it). This module imports nothing heavy: the CLI lists recipes without loading torch.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


class RecipeNotFound(ValueError):
    """A ``-c`` value that is neither a file nor a recipe name; the message is one line."""


def recipe_names() -> list[str]:
    """The shipped recipes' names, sorted (``small``, ``demo``, ...)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def describe(path: str | Path) -> str:
    """A recipe file's one-line description: its first line without the leading ``#``."""
    with open(path) as f:
        first = f.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def list_recipes() -> dict[str, str]:
    """{name: one-line description} of every shipped recipe."""
    return {name: describe(RECIPES_DIR / f"{name}.yaml") for name in recipe_names()}


def is_recipe_name(value: str) -> bool:
    return value in recipe_names()


def resolve(value: str | Path) -> Path:
    """``-c`` value -> the YAML file: an existing file wins, else a shipped recipe's name.

    Raises RecipeNotFound naming the recipes when it is neither.
    """
    file = Path(value).expanduser()
    if file.is_file():
        return file
    if isinstance(value, str) and is_recipe_name(value):
        return RECIPES_DIR / f"{value}.yaml"
    text = str(value)
    if "/" in text or os.sep in text or text.endswith((".yaml", ".yml")):
        raise RecipeNotFound(f"config file {file} not found")
    raise RecipeNotFound(f"no recipe {text!r} and no file of that name (recipes: {', '.join(recipe_names())}; "
                         "or give a YAML file)")
