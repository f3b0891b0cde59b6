"""Peak host memory of one training step with and without gradient checkpointing (CPU).

    python benchmarks/grad_checkpoint_memory.py [--model ga_convnext_tiny_688] [--batch-size 8] [--img-size 224]

Each setting runs in a fresh subprocess; the figure is the growth of the process's peak
resident set (``ru_maxrss``) over one forward + backward step, measured after the model is
built and one warm-up step has run at batch 2 (so weights, gradients and allocator caches are
not counted).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def step(model_name: str, batch_size: int, img_size: int, checkpointing: bool) -> dict:
    import torch

    import gaheads

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = gaheads.create_model(model_name).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, img_size, img_size)).mean().backward()  # warm-up (BatchNorm needs 2 samples)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(torch.randn(batch_size, 3, img_size, img_size)).mean().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(checkpointing=checkpointing, peak_growth_mib=round((after - before) / 1024, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ga_convnext_tiny_688")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(step(a.model, a.batch_size, a.img_size, a.child == "on")))
        return 0
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--model", a.model, "--batch-size", str(a.batch_size),
                              "--img-size", str(a.img_size), "--child", mode], check=True, capture_output=True,
                             text=True).stdout
        print(a.model, f"batch {a.batch_size} at {a.img_size}:", out.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
