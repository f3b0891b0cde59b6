"""``gaheads convert CKPT --model NAME --output OUT.safetensors``: a research-release checkpoint -> gaheads weights.

Reads a file the releases' training scripts wrote (timm's saver's ``{'state_dict': ...}``, its
``state_dict_ema`` with ``--ema``, or a bare state dict; ``module.`` prefixes are removed), maps it
onto the gaheads model NAME through the table in ``gaheads.convert`` and writes OUT.safetensors and
OUT.json (loadable with ``gaheads.load`` and every ``--checkpoint`` option). Nothing is unpickled
beyond tensors (``torch.load(weights_only=True)``). A checkpoint that does not fit is refused with one
line. The release's ``*1_cct`` constructors built 8 branches: convert those with the ``*8_cct`` name.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaheads convert", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by either research release")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="the gaheads model it holds, with its real branch count (e.g. ga8_cct_7_3x1_32)")
    p.add_argument("--output", required=True, metavar="OUT.safetensors", help="where to write the weights (+ .json)")
    p.add_argument("--ema", action="store_true", help="convert the checkpoint's state_dict_ema instead of state_dict")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..convert import ConvertError, convert_checkpoint

    try:
        model, (weights, config) = convert_checkpoint(args.checkpoint, args.model, args.output, use_ema=args.ema)
    except (ConvertError, CheckpointError, OSError) as e:
        print(f"gaheads convert: {e}", file=sys.stderr)
        return 1
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n:,} parameters, {model.num_branches} branch(es), {model.num_classes} classes\n"
          f"  weights: {weights}\n  config:  {config}")
    return 0
