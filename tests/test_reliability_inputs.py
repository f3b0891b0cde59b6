"""Issue 7, bad input and numerical faults through ``gaheads train``: one line naming the problem, right exit status.

Each case runs the train CLI in-process (``gaheads.train.cli.main``) and asserts the exact line
the user reads on stderr (exit status 2 for bad input, 3 for a non-finite loss). The data
package's own tests (tests/test_data*.py) cover the same layouts at the dataset level.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from data_fixtures import error_line, fast_train_flags, make_cifar100, make_imagefolder
from fault_runner import NonFiniteLossAt

from gaheads.checkpoint import FORMAT, atomic_save, load_checkpoint, model_config
from gaheads.data import BadImageWarning, create_dataset, create_sampler
from gaheads.models.factory import create_model
from gaheads.train.cli import main

IMAGEFOLDER = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
CIFAR = "<root>/cifar-100-python/{meta,train,test} (the python version of CIFAR-100)"


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_imagefolder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3)


def fake_checkpoint(path: Path, name: str, num_classes: int) -> Path:
    """What --resume reads first: a verified training checkpoint of ``name`` (weights only)."""
    model = create_model(name, num_classes=num_classes)
    atomic_save({"format": FORMAT, "model_config": model_config(model), "model": model.state_dict()}, path)
    return path


# --------------------------------------------------------------------------- data
def test_missing_data_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == (f"gaheads train: data folder {tmp_path / 'nope'} does not exist "
                                  f"(expected an ImageFolder: {IMAGEFOLDER})")


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == (f"gaheads train: data folder {tmp_path / 'empty'} is empty "
                                  f"(expected an ImageFolder: {IMAGEFOLDER})")


def test_imagefolder_without_classes(tmp_path, capsys):
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    (train / "stray.png").write_bytes(b"")
    assert main([str(tmp_path / "data"), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == (f"gaheads train: data folder {train} has no class folders "
                                  f"(expected {train}/<class>/<image files>)")


def test_class_folder_without_images(folder, tmp_path, capsys):
    (folder / "train" / "emu").mkdir()
    assert main([str(folder), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys).startswith(f"gaheads train: class folders without images in {folder / 'train'}: emu "
                                         "(expected image files with extensions .jpg, .jpeg, .png")


def test_cifar_folder_missing(tmp_path, capsys):
    (tmp_path / "README").write_text("not CIFAR")
    assert main([str(tmp_path), "--dataset", "cifar100", *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == f"gaheads train: no cifar-100-python folder in {tmp_path} (expected {CIFAR})"


def test_truncated_cifar_pickle(tmp_path, capsys):
    make_cifar100(tmp_path, n_train=8, n_test=4)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    assert main([str(tmp_path), "--dataset", "cifar100", *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys).startswith(f"gaheads train: CIFAR-100 file {train} is truncated or corrupt (")


@pytest.mark.parametrize("damage", ["zero-byte", "truncated"])
def test_unreadable_image_is_fatal_with_strict_data(damage, folder, tmp_path, capsys):
    bad = folder / "train" / "dog" / "1.png"
    bad.write_bytes(b"" if damage == "zero-byte" else bad.read_bytes()[:40])
    assert main([str(folder), "--strict-data", *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys).startswith(f"gaheads train: unreadable image {bad} (")


def test_unreadable_image_is_skipped_and_counted_without_strict_data(folder, tmp_path, capsys):
    bad = folder / "train" / "dog" / "1.png"
    bad.write_bytes(b"")
    with pytest.warns(BadImageWarning, match=f"skipping unreadable image {bad} .*using the next readable sample"):
        assert main([str(folder), *fast_train_flags(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] == 3  # 6 images, batch 2: nothing lost but the one file
    assert summary["skipped_images"] == 1 and summary["skipped_files"] == [str(bad)]
    with open(tmp_path / "out" / "metrics.csv") as f:
        assert [r["skipped_images"] for r in csv.DictReader(f)] == ["1"]
    assert "; 1 unreadable image(s) skipped so far" in capsys.readouterr().out


# --------------------------------------------------------------------------- model, config, flags
def test_unknown_model_suggests_close_names(folder, tmp_path, capsys):
    argv = [str(folder), *fast_train_flags(tmp_path / "out"), "--model", "seqattn4_cct_2_3x2_23"]
    assert main(argv) == 2
    assert error_line(capsys).startswith("gaheads train: unknown model 'seqattn4_cct_2_3x2_23'; did you mean "
                                         "seqattn4_cct_2_3x2_32")


def test_config_file_with_unknown_key(folder, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    assert main([str(folder), "-c", str(cfg), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == f"gaheads train: config file {cfg}: unknown key 'learning_rate'"


def test_config_file_that_is_not_yaml(folder, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: [1\n")
    assert main([str(folder), "-c", str(cfg), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys).startswith(f"gaheads train: config file {cfg} is not valid YAML (")


# --------------------------------------------------------------------------- checkpoints and output
def test_resume_missing_file(folder, tmp_path, capsys):
    assert main([str(folder), *fast_train_flags(tmp_path / "out"), "--resume", str(tmp_path / "gone.pth")]) == 2
    assert error_line(capsys) == f"gaheads train: no checkpoint at {tmp_path / 'gone.pth'}"


def test_resume_file_that_is_not_a_checkpoint(folder, tmp_path, capsys):
    junk = tmp_path / "last.pth"
    junk.write_bytes(b"PK\x03\x04 half a zip")
    assert main([str(folder), *fast_train_flags(tmp_path / "out"), "--resume", str(junk)]) == 2
    assert error_line(capsys).startswith(f"gaheads train: {junk} is not a readable checkpoint (")


def test_resume_checkpoint_of_another_model(folder, tmp_path, capsys):
    ck = fake_checkpoint(tmp_path / "cct.pth", "cct_2_3x2_32", num_classes=2)
    argv = [str(folder), *fast_train_flags(tmp_path / "out"), "--model", "seqattn2_cct_2_3x2_32", "--resume", str(ck)]
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"gaheads train: --resume {ck} does not fit this model (seqattn2_cct_2_3x2_32): ")
    assert "missing [14]: head." in line  # the SeqAttention blocks the SeqPool checkpoint lacks


def test_resume_checkpoint_of_another_class_count(folder, tmp_path, capsys):
    ck = fake_checkpoint(tmp_path / "cct100.pth", "cct_2_3x2_32", num_classes=100)
    assert main([str(folder), *fast_train_flags(tmp_path / "out"), "--resume", str(ck)]) == 2
    assert error_line(capsys) == (
        f"gaheads train: --resume {ck} does not fit this model (cct_2_3x2_32): shape mismatch [2]: "
        "head.classifier.bias: (1, 100) vs model (1, 2), head.classifier.weight: (1, 1, 100, 128) vs model "
        "(1, 1, 2, 128)")  # the K-branch classifier's stacked weights


def test_output_folder_not_writable(folder, tmp_path, capsys):
    # running as root makes chmod ineffective; a path below a regular file is unwritable for everyone
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([str(folder), *fast_train_flags(blocker / "run")]) == 2
    assert error_line(capsys) == f"gaheads train: output folder {blocker / 'run'} is not writable (Not a directory)"


# --------------------------------------------------------------------------- non-finite losses
def nan_run(folder: Path, out: Path, steps: tuple[int, ...], *extra: str) -> int:
    # 6 images, batch 2: 3 steps per epoch, 2 epochs
    return main([str(folder), *fast_train_flags(out, "--epochs", "2", "--checkpoint-steps", "2", *extra)],
                callbacks=[NonFiniteLossAt(*steps)])


def test_nonfinite_loss_stops_with_exit_3_naming_step_batch_and_checkpoint(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert nan_run(folder, out, (3,)) == 3
    # the samples of batch 3 of epoch 1, as the loader dealt them
    train = create_dataset("imagefolder", folder, "train")
    sampler = create_sampler(train, 2, True, seed=42, drop_last=True)
    sampler.set_epoch(0)
    batch3 = sorted(i for i, _ in list(sampler)[4:6])
    assert error_line(capsys) == (
        f"gaheads train: non-finite loss at optimizer step 3 (epoch 1, batch 3 of 3); sample indices "
        f"[{batch3[0]}, {batch3[1]}]; last good checkpoint: {out / 'last.pth'} (epoch 1, step 2) "
        "(--skip-nonfinite N skips up to N such steps)")
    assert load_checkpoint(out / "last.pth")["step"] == 2


def test_skip_nonfinite_tolerates_n_steps(folder, tmp_path, capsys):
    out = tmp_path / "ok"
    assert nan_run(folder, out, (3, 5), "--skip-nonfinite", "2") == 0
    stdout = capsys.readouterr().out
    assert "gaheads train: skipped optimizer step 3 (epoch 1, batch 3 of 3): non-finite loss" in stdout
    assert "(2 of 2 allowed)" in stdout
    with open(out / "metrics.csv") as f:
        assert [r["skipped_steps"] for r in csv.DictReader(f)] == ["1", "1"]
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 2

    assert nan_run(folder, tmp_path / "over", (3, 5), "--skip-nonfinite", "1") == 3
    line = error_line(capsys)
    assert line.startswith("gaheads train: non-finite loss at optimizer step 5 (epoch 2, batch 2 of 3)")
    assert line.endswith(f"last good checkpoint: {tmp_path / 'over' / 'last.pth'} (epoch 2, step 4) "
                         "(1 such step already skipped)")
