"""``gaheads recipes [NAME]``: the training recipes shipped with gaheads, one line each (or one in full).

A recipe is a YAML file of ``gaheads train`` flag values: ``gaheads train DATA -c NAME``; flags
given on the command line override it; ``-c FILE.yaml`` reads your own.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads recipes", description="The shipped training recipes "
                                "(gaheads train DATA -c NAME; command-line flags override a recipe).",
                                epilog="docs/recipes.md gives each recipe's numbers and measured results.")
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="print this recipe's YAML in full")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..recipes import RECIPES_DIR, list_recipes, recipe_names

    if args.name is not None:
        if args.name not in recipe_names():
            print(f"gaheads recipes: no recipe {args.name!r} (recipes: {', '.join(recipe_names())})", file=sys.stderr)
            return 2
        path = RECIPES_DIR / f"{args.name}.yaml"
        print(f"# {path}\n{path.read_text()}", end="")
        return 0
    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, about in recipes.items():
        print(f"{name:<{width}}  {about}")
    print(f"\nuse: gaheads train DATA -c NAME [flags]; gaheads recipes NAME prints one in full ({RECIPES_DIR})")
    return 0
