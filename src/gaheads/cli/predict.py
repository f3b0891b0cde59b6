"""``gaheads predict --checkpoint PATH IMAGE|FOLDER... [--topk 5] [--json] [-b N]``.

Top-k classes (names from the checkpoint) with probabilities for every image; folders are
searched recursively. An unreadable image is named on stderr and skipped, the rest are still
predicted. Exit status: 0 when at least one image was predicted (check stderr, or the
``error`` entries of ``--json``, for skipped files); 2 when none could be read or the
checkpoint/arguments are bad.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import add_checkpoint_args, add_pixel_limit_arg, add_threads_arg, failed, set_up_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads predict", description="Top-k classes of images or folders.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER", help="image files or folders of images")
    add_checkpoint_args(p)
    add_threads_arg(p)
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    add_pixel_limit_arg(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch  # loaded only now, so --help answers at once

    from ..checkpoint import CheckpointError, load
    from ..inference import predict

    try:
        if args.topk < 1 or args.batch_size < 1:
            raise ValueError("--topk and --batch-size must be >= 1")
        set_up_command(args)
        model = load(args.checkpoint, use_ema=not args.no_ema).to(torch.device(args.device))
        results = predict(model, args.inputs, topk=args.topk, batch_size=args.batch_size,
                          max_pixels=args.max_image_pixels)
    except (CheckpointError, ValueError, OSError, RuntimeError) as e:
        return failed("gaheads predict", e)
    for r in results:
        if r.ok:
            continue
        print(f"gaheads predict: skipped {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                tops = "  ".join(f"{c} {p:.1%}" for c, p in zip(r.classes, r.probs))
                print(f"{r.source}: {tops}")
    if not any(r.ok for r in results):
        print("gaheads predict: no image could be read", file=sys.stderr)
        return 2
    return 0
