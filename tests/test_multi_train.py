"""gaheads multi-train: the setups' flags are the papers' recipes, a failed run does not stop the others, one table."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from data_fixtures import make_cifar100, make_imagefolder
from fault_runner import SignalAtStep

from gaheads.checkpoint import load_checkpoint
from gaheads.flops import count_params
from gaheads.models.factory import create_model
from gaheads.train import engine, multi
from gaheads.train.config import parse_args

TINY = ["--epochs", "1", "-b", "4", "--workers", "0", "--no-progress"]


def setup_args(setup: str, model: str, *flags: str):
    opts, extra = multi.build_parser().parse_known_args([setup, "-m", model, *flags])
    argv, note = multi.train_argv(multi.SETUPS[setup], model, opts, extra, None, Path("out"))
    return parse_args(argv), note


def test_cifar100_setup_is_the_seqattention_recipe():
    args, note = setup_args("cifar100", "seqattn1_cct_7_3x1_32")
    assert note is None  # the model is built for 32x32 already
    assert args.dataset == "cifar100" and args.data_dir == "data" and args.model == "seqattn1_cct_7_3x1_32"
    assert args.img_size is None
    assert tuple(args.scale) == (0.8, 1.0) and args.hflip == 0.5 and args.aa == "rand-m9-mstd0.5-inc1"
    assert (args.cutmix, args.mixup, args.reprob, args.smoothing) == (1.0, 0.8, 0.25, 0.1)
    assert args.train_interpolation == args.interpolation == "bicubic" and args.crop_pct == 1.0
    assert args.mean == [0.5071, 0.4867, 0.4408] and args.std == [0.2675, 0.2565, 0.2761]
    assert args.opt == "adamw" and args.opt_betas == [0.9, 0.999] and args.lr == 5e-4 and args.weight_decay == 6e-2
    assert args.batch_size == 256 and args.sched == "cosine" and args.epochs == 300
    assert (args.warmup_epochs, args.warmup_lr, args.min_lr) == (10, 1e-6, 1e-5)
    assert args.amp and args.channels_last and args.drop_path == 0.0
    assert args.aug_repeats == 0 and args.grad_accumulation == 1 and not args.bce_loss and args.GA_lam == -0.8


def test_imagenet_setup_keeps_the_models_input_size_and_says_so():
    args, note = setup_args("imagenet", "cct_7_3x1_32")
    assert args.dataset == "imagefolder" and args.data_dir == str(Path("data") / "imageNet")
    assert args.img_size is None and args.lr == 5e-4 and args.mixup == 0.8 and args.epochs == 300
    assert note == ("imagenet: cct_7_3x1_32 trains at its own input size 32x32 "
                    "(neither paper fixes it; pass --img-size to change it)")
    args, note = setup_args("imagenet", "cct_7_3x1_32", "--img-size", "64", "--data-root", "/d", "--epochs", "5")
    assert args.img_size == 64 and args.data_dir == str(Path("/d") / "imageNet") and args.epochs == 5
    assert note == "imagenet: cct_7_3x1_32 trains at 64x64 (set by --img-size; the model's own input is 32x32)"


def test_extra_flags_reach_every_run_and_win():
    args, _ = setup_args("mnist5k", "seqattn4_cct_2_3x2_32", "-b", "32", "--lr", "1e-3", "--seeds", "7")
    assert args.dataset == "mnist5k" and args.data_dir is None
    assert args.batch_size == 32 and args.lr == 1e-3 and args.hflip == 0.0 and args.mixup == 0.0


def test_bad_setup_and_unwritable_output_are_one_line_errors(tmp_path, capsys):
    assert multi.main(["cifar10", "-m", "cct_2_3x2_32"]) == 2
    assert capsys.readouterr().err.strip() == ("gaheads multi-train: unknown setup 'cifar10' "
                                               "(choose from cifar100, imagenet, mnist5k, or give a data folder)")
    assert multi.main(["mnist5k", "-m", "cct_2_3x2_32", "-c", "smal"]) == 2
    assert capsys.readouterr().err.startswith("gaheads multi-train: no recipe 'smal' and no file of that name")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert multi.main(["mnist5k", "-m", "cct_2_3x2_32", "--output", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gaheads multi-train: cannot create output folder {blocker / 'runs'}") and "\n" not in err


def test_a_data_folder_is_a_setup_with_the_small_recipe_and_c_replaces_it(tmp_path):
    folder = make_imagefolder(tmp_path / "my_pics", classes=("a", "b"), per_class=2)
    opts, extra = multi.build_parser().parse_known_args([str(folder), "-m", "seqattn2_cct_2_3x2_32"])
    setup = multi.resolve_setup(opts.setups[0], opts.recipe)
    assert (setup.name, setup.dataset, setup.recipe, setup.data_path) == ("my_pics", "imagefolder", "small",
                                                                         str(folder.resolve()))
    argv, note = multi.train_argv(setup, "seqattn2_cct_2_3x2_32", opts, extra, None, Path("out"))
    assert argv[:3] == [str(folder.resolve()), "-c", "small"]
    assert note == "my_pics: seqattn2_cct_2_3x2_32 trains at its own input size 32x32 (pass --img-size to change it)"
    args = parse_args(argv)
    assert (args.dataset, args.data_dir, args.epochs, args.lr, args.hflip) == ("imagefolder", str(folder.resolve()),
                                                                               30, 2e-3, 0.0)
    opts, extra = multi.build_parser().parse_known_args(["cifar100", "-m", "cct_2_3x2_32", "-c", "small"])
    args = parse_args(multi.train_argv(multi.resolve_setup("cifar100", opts.recipe), "cct_2_3x2_32", opts, extra,
                                       None, Path("out"))[0])
    assert (args.dataset, args.epochs, args.opt, args.lr) == ("cifar100", 30, "adamw", 2e-3)  # the setup's data


def test_multi_train_on_a_folder_with_a_recipe(tmp_path, capsys):
    folder = make_imagefolder(tmp_path / "pics", classes=("a", "b"), per_class=4)
    out = tmp_path / "runs"
    assert multi.main([str(folder), "-c", "small", "-m", "cct_2_3x2_32", "--output", str(out), *TINY]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["setup"], r["model"], r["status"], r["epochs"]) for r in rows] == [("pics", "cct_2_3x2_32", "ok", 1)]
    summary = json.loads((out / "pics" / "cct_2_3x2_32" / "summary.json").read_text())
    assert summary["eval_samples"] == 8 and summary["steps"] == 2 and summary["dataset"] == "imagefolder"


def test_failed_run_does_not_stop_the_others(tmp_path, capsys):
    make_cifar100(tmp_path / "data", n_train=8, n_test=4, n_classes=5)
    out = tmp_path / "runs"
    code = multi.main(["cifar100", "-m", "seqattn2_cct_2_3x2_23", "cct_2_3x2_32", "--seeds", "3", "4", "--data-root",
                       str(tmp_path / "data"), "--output", str(out), *TINY])
    assert code == 1  # one model failed
    rows = json.loads((out / "results.json").read_text())
    assert [(r["setup"], r["model"], r["seed"], r["status"]) for r in rows] == [
        ("cifar100", "seqattn2_cct_2_3x2_23", 3, "failed"), ("cifar100", "seqattn2_cct_2_3x2_23", 4, "failed"),
        ("cifar100", "cct_2_3x2_32", 3, "ok"), ("cifar100", "cct_2_3x2_32", 4, "ok")]
    assert rows[0]["reason"].startswith("UnknownModelError: unknown model 'seqattn2_cct_2_3x2_23'; did you mean "
                                        "seqattn2_cct_2_3x2_32")
    params = count_params(create_model("cct_2_3x2_32", num_classes=5))["total"]
    for row in rows[2:]:
        summary = json.loads((out / "cifar100" / f"cct_2_3x2_32-seed{row['seed']}" / "summary.json").read_text())
        assert summary["seed"] == row["seed"] and summary["eval_samples"] == 4 and summary["steps"] == 2
        assert (row["epochs"], row["params"]) == (1, params)
        assert (row["top1"], row["top5"], row["best_top1"], row["seconds"]) == (
            summary["final_top1"], summary["final_top5"], summary["best_top1"], summary["train_seconds"])
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["failed", "failed", "ok", "ok"] and table[2]["params"] == str(params)
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(multi.COLUMNS) + " |" and len(md) == 6
    assert md[4].startswith(f"| cifar100 | cct_2_3x2_32 | 3 | {params} | 1 |") and "| ok |" in md[4]
    stdout = capsys.readouterr().out
    assert "cifar100 / seqattn2_cct_2_3x2_23: FAILED: UnknownModelError: unknown model" in stdout


def test_interrupted_sweep_continues_where_it_stopped(tmp_path, capsys, monkeypatch):
    make_cifar100(tmp_path / "data", n_train=8, n_test=4, n_classes=5)
    out = tmp_path / "runs"
    argv = ["cifar100", "-m", "cct_2_3x2_32", "seqattn2_cct_2_3x2_32", "--data-root", str(tmp_path / "data"),
            "--output", str(out), *TINY]
    plain_train = engine.train

    def train_signalled_after_step_1(args, callbacks=None):  # the engine stops at the next step boundary
        return plain_train(args, callbacks=[SignalAtStep(1, signal.SIGTERM)])

    with monkeypatch.context() as m:
        m.setattr(engine, "train", train_signalled_after_step_1)
        assert multi.main(argv + ["--log-interval", "1"]) == 143
    last = out / "cifar100" / "cct_2_3x2_32" / "last.pth"
    rows = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["status"]) for r in rows] == [("cct_2_3x2_32", "interrupted")]
    assert rows[0]["reason"] == (f"stopped by SIGTERM; resumable checkpoint {last}; run the same multi-train "
                                 "command again to continue")
    assert load_checkpoint(last)["step"] == 2 and not (last.parent / "summary.json").exists()
    capsys.readouterr()

    assert multi.main(argv) == 0  # the same command: resumes the first run, trains the second
    assert f"gaheads train: resumed from {last} at epoch 1, step 2" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["status"], r["epochs"]) for r in rows] == [("cct_2_3x2_32", "ok", 1),
                                                                      ("seqattn2_cct_2_3x2_32", "ok", 1)]
    assert multi.main(argv) == 0  # again: both finished runs are kept, nothing trains
    stdout = capsys.readouterr().out
    assert "gaheads train:" not in stdout and stdout.count("already holds this run, trained to the end") == 2
    assert json.loads((out / "results.json").read_text()) == rows

    assert multi.main(argv + ["--lr", "1e-3"]) == 1  # a changed recipe never continues an old run
    rows = json.loads((out / "results.json").read_text())
    assert rows[0]["status"] == "failed" and rows[0]["reason"] == (
        f"ValueError: {last.parent} holds a run with other flags (lr 0.0005 -> 0.001); use another --output or "
        "delete it")


def test_torchrun_trains_several_models_in_one_process_group(tmp_path):
    make_imagefolder(tmp_path / "data" / "imageNet", classes=("n01", "n02"), per_class=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(multi.__file__).parents[3] / "multi_train.py"), "imagenet", "-m", "cct_2_3x2_32",
           "seqattn2_cct_2_3x2_32", "--epochs", "1", "-b", "2", "--workers", "0", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "runs" / "multi_train" / "results.json").read_text())
    assert [(r["model"], r["status"]) for r in rows] == [("cct_2_3x2_32", "ok"), ("seqattn2_cct_2_3x2_32", "ok")]
    for model in ("cct_2_3x2_32", "seqattn2_cct_2_3x2_32"):
        summary = json.loads((tmp_path / "runs" / "multi_train" / "imagenet" / model / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["eval_samples"] == 8 and summary["steps"] == 2
