"""``gaheads explain --checkpoint PATH IMAGE [--output PNG] [--json]``.

One PNG: the image as the model saw it and, per branch, its class-attention map (the query
token's attention over the spatial tokens, mean over attention heads, upsampled) titled with
that branch's top class; GA heads add the cosine similarity of the branches' gram vectors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_checkpoint_args, failed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads explain", description="Per-branch class-attention maps of one image.")
    p.add_argument("image", help="an image file")
    add_checkpoint_args(p, device=False)
    p.add_argument("--output", help="PNG to write (default: <image stem>_explain.png in the current folder)")
    p.add_argument("--json", action="store_true", help="also print the top classes and gram similarity as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # the model stack loads only now, so --help answers at once
    from ..checkpoint import CheckpointError, as_storage_error, load
    from ..explanation import ExplainError, describe, explain
    from ..inference import ImageError

    output = Path(args.output) if args.output else Path(f"{Path(args.image).stem}_explain.png")
    try:
        model = load(args.checkpoint, use_ema=not args.no_ema)
        try:
            result = explain(model, args.image, output)
        except OSError as e:  # the image was read (ImageError otherwise): a fault writing the PNG
            raise as_storage_error(e, output) from e
    except (CheckpointError, ExplainError, ImageError, OSError) as e:  # OSError: StorageError too (exit 4)
        return failed("gaheads explain", e)
    if result.message:
        print(result.message)
    for i, (c, p) in enumerate(result.branch_top):
        print(f"branch {i}: {c} ({p:.1%})")
    print(f"ensemble: {result.ensemble_top[0]} ({result.ensemble_top[1]:.1%})")
    if args.json:
        print(json.dumps(describe(result), indent=2))
    print(f"wrote {output}")
    return 0
