"""Named recipes shipped in the package: -c NAME / -c FILE, `gaheads recipes`, package data, multi-train reuse."""

from __future__ import annotations

try:  # Python 3.11+
    import tomllib
except ImportError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

from pathlib import Path

import pytest

from gaheads.cli import main as gaheads_main
from gaheads.recipes import RECIPES_DIR, list_recipes, recipe_names, resolve
from gaheads.train import multi
from gaheads.train.config import ConfigError, build_parser, parse_args

ROOT = Path(__file__).resolve().parents[1]
SMALL_SCHEDULE = dict(opt="adamw", lr=2e-3, weight_decay=0.05, batch_size=64, sched="cosine", warmup_epochs=1,
                      warmup_lr=1e-5, min_lr=1e-5, smoothing=0.1, GA_lam=-0.8, drop_path=0.1, hflip=0.0, aa=None,
                      mixup=0.0, cutmix=0.0, aug_repeats=0, reprob=0.0, workers=0, model="seqattn4_cct_2_3x2_32")


def test_the_shipped_recipes_and_their_one_line_descriptions():
    assert recipe_names() == ["cifar100", "demo", "finetune", "imagenet-ga", "small"]
    about = list_recipes()
    assert about["small"].startswith("your own small ImageFolder from scratch (CPU or GPU)")
    assert all(line and "\n" not in line for line in about.values())


def test_every_recipe_parses_and_names_no_output_folder(tmp_path):
    for name in recipe_names():
        args = parse_args([str(tmp_path), "-c", name])
        assert args.config == name and args.output is None  # a recipe never pins the run folder


def test_small_is_the_demo_schedule_without_the_demo_data(tmp_path):
    small, demo = parse_args([str(tmp_path), "-c", "small"]), parse_args(["-c", "demo"])
    assert small.dataset == "imagefolder" and small.data_dir == str(tmp_path) and small.epochs == 30
    assert demo.dataset == "mnist5k" and demo.epochs == 15
    for key, value in SMALL_SCHEDULE.items():
        assert getattr(small, key) == value == getattr(demo, key), key
    assert list(small.scale) == [0.8, 1.0] and list(small.ratio) == [0.9, 1.1]


def test_papers_recipes_hold_their_published_flags(tmp_path):
    ga = parse_args([str(tmp_path), "-c", "imagenet-ga"])
    assert (ga.opt, ga.lr, ga.opt_eps, ga.momentum, ga.weight_decay, ga.batch_size, ga.grad_accumulation) == (
        "lamb", 5e-3, 1e-8, 0.8, 0.05, 128, 4)
    assert ga.bce_loss and ga.amp and ga.channels_last and ga.epochs == 300 and ga.workers == 8
    assert (ga.model, ga.drop_path, ga.aug_repeats, ga.mixup, ga.cutmix) == ("ga_convnext_tiny", 0.2, 3, 0.2, 1.0)
    cifar = parse_args([str(tmp_path), "-c", "cifar100"])
    assert (cifar.dataset, cifar.opt, cifar.lr, cifar.batch_size, cifar.epochs, cifar.warmup_epochs) == (
        "cifar100", "adamw", 5e-4, 256, 300, 10)
    assert cifar.mean == [0.5071, 0.4867, 0.4408] and cifar.crop_pct == 1.0 and cifar.reprob == 0.25


def test_finetune_gives_the_backbone_a_tenth_of_the_lr(tmp_path):
    args = parse_args([str(tmp_path), "-c", "finetune", "--backbone-checkpoint", "r18.pth"])
    assert (args.model, args.backbone_lr_scale, args.lr, args.backbone_checkpoint) == ("ga5@resnet18", 0.1, 1e-3,
                                                                                      "r18.pth")


def test_command_line_flags_override_a_recipe_and_files_still_work(tmp_path):
    args = parse_args([str(tmp_path), "-c", "small", "--epochs", "3", "--lr", "1e-3"])
    assert (args.epochs, args.lr, args.batch_size) == (3, 1e-3, 64)
    own = tmp_path / "mine.yaml"
    own.write_text("epochs: 2\nmodel: cct_2_3x2_32\n")
    args = parse_args([str(tmp_path), "-c", str(own)])
    assert (args.epochs, args.model) == (2, "cct_2_3x2_32")


def test_unknown_recipe_name_is_one_line_naming_the_recipes(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_args([str(tmp_path), "-c", "smal"])
    assert str(e.value) == ("no recipe 'smal' and no file of that name (recipes: cifar100, demo, finetune, "
                            "imagenet-ga, small; or give a YAML file)")
    with pytest.raises(ConfigError, match=r"^config file /nonexistent/x.yaml not found$"):
        parse_args([str(tmp_path), "-c", "/nonexistent/x.yaml"])


def test_recipes_are_package_data_and_the_demo_config_is_the_demo_recipe():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "recipes/*.yaml" in project["tool"]["setuptools"]["package-data"]["gaheads"]
    assert RECIPES_DIR == ROOT / "src" / "gaheads" / "recipes"
    assert (ROOT / "configs" / "demo_mnist5k.yaml").resolve() == resolve("demo").resolve()
    assert "-c demo --output runs/demo" in (ROOT / "Makefile").read_text()


def test_multi_train_setups_use_the_recipes_not_a_copy():
    assert {name: s.recipe for name, s in multi.SETUPS.items()} == {"cifar100": "cifar100", "imagenet": "cifar100",
                                                                    "mnist5k": "demo"}
    assert multi.SETUPS["cifar100"].epochs == 300 and multi.SETUPS["mnist5k"].epochs == 15
    assert not hasattr(multi, "SEQATTN_RECIPE") and not hasattr(multi, "MNIST5K_RECIPE")


def test_gaheads_recipes_lists_one_line_each_and_prints_one(capsys):
    assert gaheads_main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:5]] == recipe_names()
    assert lines[4] == f"small        {list_recipes()['small']}"
    assert gaheads_main(["recipes", "small"]) == 0
    assert "epochs: 30" in capsys.readouterr().out
    assert gaheads_main(["recipes", "nope"]) == 2
    assert capsys.readouterr().err == ("gaheads recipes: no recipe 'nope' (recipes: cifar100, demo, finetune, "
                                       "imagenet-ga, small)\n")


def test_help_text_has_no_empty_or_doubled_defaults():
    text = build_parser().format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "the dataset's) (default" not in text and "(default: 300)" in text
