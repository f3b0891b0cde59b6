"""gaheads train's flags: the seed commands parse, defaults are the GA research script's, YAML configs."""

import shlex

import pytest

from gaheads.train.cli import main
from gaheads.train.config import ConfigError, parse_args

# the GA research commands, as typed by the GA seed's users; everything after train.py is our parser's input
GA_SEED_COMMANDS = [
    "python3 -m torch.distributed.launch --nproc_per_node=2 --master_port=12345 train.py your_imageNet_root -b 128 "
    "--grad-accumulation 4 --smoothing 0.1 --bce-loss --opt lamb --opt-eps 1e-8 --momentum 0.8 --weight-decay 0.05 "
    "--sched cosine --epochs 300 --lr 5e-3 --warmup-lr 1e-6 --sched cosine -j 8 --amp --channels-last "
    f"--model {model} --GA_lam -0.8 --drop-path {dp}"
    for model, dp in (("ga_convnext_tiny", ".2"), ("ga_convnext_small", ".4"), ("ga_convnext_base", ".5"))
] + [
    "python3 -m torch.distributed.launch --nproc_per_node=2 --master_port=12341 train.py your_imageNet_root -b 128 "
    "--grad-accumulation 4 --smoothing 0.1 --bce-loss --opt lamb --opt-eps 1e-8 --momentum 0.8 --weight-decay 0.05 "
    "--sched cosine --epochs 300 --lr 2e-3 --warmup-lr 1e-6 --sched cosine -j 8 --amp --channels-last "
    f"--model {model} --GA_lam -0.8 --drop-path {dp}"
    for model, dp in (("ga_CSWin_64_12211_tiny_224", ".2"), ("ga_CSWin_64_24322_small_224", ".4"))
]


def train_argv(command: str) -> list[str]:
    words = shlex.split(command)
    return words[words.index("train.py") + 1:]


@pytest.mark.parametrize("command", GA_SEED_COMMANDS)
def test_seed_commands_parse_to_their_values(command):
    args = parse_args(train_argv(command) + ["--local-rank=1"])  # torch.distributed.launch appends this
    assert args.data_dir == "your_imageNet_root" and args.dataset == "imagefolder"
    assert (args.batch_size, args.grad_accumulation, args.epochs, args.workers) == (128, 4, 300, 8)
    assert (args.smoothing, args.bce_loss, args.opt, args.opt_eps, args.momentum) == (0.1, True, "lamb", 1e-8, 0.8)
    assert (args.weight_decay, args.sched, args.warmup_lr, args.GA_lam) == (0.05, "cosine", 1e-6, -0.8)
    assert args.amp and args.channels_last and args.local_rank == 1
    assert args.lr == (5e-3 if "convnext" in command else 2e-3)
    assert args.drop_path == float(command.split("--drop-path ")[1])
    # the research script's defaults that these commands inherit
    assert (args.aa, args.aug_repeats, args.mixup, args.cutmix, args.mixup_prob, args.switch_prob) == (
        "rand-m9-mstd0.5-inc1", 3, 0.2, 1.0, 1.0, 0.5)
    assert (args.train_interpolation, args.color_jitter, args.reprob, args.warmup_epochs, args.min_lr, args.seed) == (
        "random", 0.4, 0.0, 3, 1e-6, 42)


def test_repeated_flag_keeps_the_last_value_and_local_rank_spellings():
    args = parse_args(["--dataset", "mnist5k", "--sched", "cosine", "--sched", "tanh", "--local_rank", "3"])
    assert args.sched == "tanh" and args.local_rank == 3 and args.data_dir is None


def test_yaml_config_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: mnist5k\nbatch-size: 32\nlr: 1e-3\nmean: [0.5, 0.5, 0.5]\naa: none\nmodel_ema: true\n")
    args = parse_args(["-c", str(cfg), "-b", "16"])
    assert args.batch_size == 16 and args.lr == 1e-3 and args.mean == [0.5, 0.5, 0.5]
    assert args.dataset == "mnist5k" and args.aa is None and args.model_ema


def test_yaml_unknown_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dataset: mnist5k\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        parse_args(["-c", str(cfg)])
    assert main(["-c", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gaheads train: config file {cfg}: unknown key 'learning_rate'"


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist5k", "--bogus"], "unrecognized arguments: --bogus"),
    (["--dataset", "cifar100"], "--dataset cifar100 needs a data root"),
    (["--dataset", "mnist5k", "-b", "3"], "mixup/cutmix needs an even batch size, got -b 3"),
    (["--dataset", "mnist5k", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--dataset", "mnist5k", "-c", "/nonexistent/x.yaml"], "config file /nonexistent/x.yaml not found"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gaheads train: ") and message in err
