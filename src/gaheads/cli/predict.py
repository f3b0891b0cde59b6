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

from ..train.config import whole_number
from . import add_checkpoint_args, add_threads_arg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads predict", description="Top-k classes of images or folders.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER", help="image files or folders of images")
    add_checkpoint_args(p)
    add_threads_arg(p)
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.add_argument("--max-image-pixels", type=whole_number(0), default=None, metavar="N",
                   help="skip images of more pixels than N; 0: no limit (default: PIL's limit, 89,478,485)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..threads import apply_threads

    apply_threads(args.threads)  # process-wide: the command's choice, never the library's
    import torch  # loaded only now, so --help answers at once

    from ..checkpoint import CheckpointError, load
    from ..inference import predict
    from ..preprocess import set_pil_pixel_limit

    try:
        if args.topk < 1 or args.batch_size < 1:
            raise ValueError("--topk and --batch-size must be >= 1")
        if args.max_image_pixels is not None:
            set_pil_pixel_limit(args.max_image_pixels)  # process-wide: a command's choice, as in train
        model = load(args.checkpoint, use_ema=not args.no_ema).to(torch.device(args.device))
        results = predict(model, args.inputs, topk=args.topk, batch_size=args.batch_size,
                          max_pixels=args.max_image_pixels)
    except (CheckpointError, ValueError, OSError, RuntimeError) as e:
        print(f"gaheads predict: {e}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r.ok]
    for r in failed:
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
