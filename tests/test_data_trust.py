"""Data that is what it claims: matching class sets, symlink loops, one-class folders, pixel limits, numeric flags.

Each refusal is asserted as the exact one line the user reads; each survival by what was loaded.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import error_line, fast_train_flags, make_imagefolder, write_image
from model_fixtures import make_checkpoint
from PIL import Image

from gaheads.cli import predict as predict_cli
from gaheads.cli import validate as validate_cli
from gaheads.data import BadImageWarning, DataError, LinkLoopWarning, create_dataset
from gaheads.train.cli import main as train_main


# --------------------------------------------------------------------------- class sets
def test_train_refuses_val_with_other_classes(tmp_path, capsys):
    make_imagefolder(tmp_path, classes=("cat", "dog", "emu"), splits=("train",))
    make_imagefolder(tmp_path, classes=("cat", "emu", "yak"), splits=("val",))
    assert train_main([str(tmp_path), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == ("gaheads train: train and val class folders differ (missing in val: dog; "
                                  "only in val: yak); the val split must have the same classes as train")
    assert not (tmp_path / "out" / "last.pth").exists()


def test_validate_refuses_data_whose_classes_are_not_the_checkpoints(tmp_path, capsys):
    ckpt, _ = make_checkpoint(tmp_path / "last.pth", class_names=["cat", "dog", "emu"])
    make_imagefolder(tmp_path / "data", classes=("cat", "dog", "yak"), splits=("val",))
    assert validate_cli.main([str(tmp_path / "data"), "--checkpoint", str(ckpt)]) == 2
    assert error_line(capsys) == ("gaheads validate: the checkpoint and val classes differ (missing in val: emu; "
                                  "only in val: yak); the val split must have the same classes as the checkpoint")


# --------------------------------------------------------------------------- symlink loops
def looped_folder(root: Path) -> Path:
    """train/{cat,dog}/ with 3 images each, and links that lead back into the tree."""
    make_imagefolder(root, classes=("cat", "dog"), per_class=3, splits=("train",))
    train = root / "train"
    os.symlink("..", train / "cat" / "loop")  # -> train/: would pull dog's images into cat, forever
    os.symlink(".", train / "dog" / "self")  # -> dog/ itself
    (train / "cat" / "sub").mkdir()
    write_image(train / "cat" / "sub" / "deep.png", 7)
    os.symlink("../../../train", train / "cat" / "sub" / "up")  # -> train/ again, from deeper
    os.symlink("sub", train / "cat" / "alias")  # a second path to cat/sub
    os.symlink("../cat/0.png", train / "dog" / "stolen.png")  # a file of cat's, linked into dog
    return train


def test_symlink_loops_count_no_file_twice_and_none_under_a_wrong_class(tmp_path):
    train = looped_folder(tmp_path)
    with pytest.warns(LinkLoopWarning) as record:
        ds = create_dataset("imagefolder", tmp_path, "train")
    rel = [(str(Path(p).relative_to(train)), ds.classes[t]) for p, t in ds.samples]
    assert rel == [("cat/0.png", "cat"), ("cat/1.png", "cat"), ("cat/2.png", "cat"), ("cat/sub/deep.png", "cat"),
                   ("dog/0.png", "dog"), ("dog/1.png", "dog"), ("dog/2.png", "dog")]
    assert ds.left_out_links == [f"{train}/cat/alias -> {train}/cat/sub", f"{train}/cat/loop -> {train}",
                                 f"{train}/cat/sub/up -> {train}", f"{train}/dog/self -> {train}/dog"]
    assert len(record) == 1 and str(record[0].message) == (
        f"{train}: left out 4 symlinked folder(s) that lead to a folder already scanned (a symlink loop or a "
        f"second path to the same images): {train}/cat/alias -> {train}/cat/sub, {train}/cat/loop -> {train}, "
        f"{train}/cat/sub/up -> {train} and 1 more")


def test_symlink_loop_through_train_keeps_the_image_count(tmp_path, capsys):
    looped_folder(tmp_path)
    make_imagefolder(tmp_path, classes=("cat", "dog"), per_class=3, splits=("val",))
    with pytest.warns(LinkLoopWarning):
        assert train_main([str(tmp_path), *fast_train_flags(tmp_path / "out")]) == 0
    assert "on imagefolder: 7 train / 6 val images, 2 classes" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 3  # 7 images, batch 2


def test_a_linked_folder_outside_the_split_is_followed(tmp_path):
    make_imagefolder(tmp_path, classes=("cat", "dog"), per_class=1, splits=("train",))
    write_image(tmp_path / "more" / "m.png", 9)
    os.symlink(tmp_path / "more", tmp_path / "train" / "cat" / "more")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out, nothing to warn about
        ds = create_dataset("imagefolder", tmp_path, "train")
    assert [(Path(p).name, t) for p, t in ds.samples] == [("0.png", 0), ("m.png", 0), ("0.png", 1)]


def test_a_class_folder_that_links_to_another_is_refused(tmp_path):
    make_imagefolder(tmp_path, classes=("cat", "dog"), per_class=1, splits=("train",))
    os.symlink("cat", tmp_path / "train" / "kitty")
    with pytest.raises(DataError) as e:
        create_dataset("imagefolder", tmp_path, "train")
    assert str(e.value) == (f"class folders cat and kitty in {tmp_path / 'train'} are the same folder (one is a "
                            "link to the other); every class needs a folder of its own")


# --------------------------------------------------------------------------- one class
def test_one_class_is_refused(tmp_path, capsys):
    make_imagefolder(tmp_path, classes=("cat",), per_class=3)
    train = tmp_path / "train"
    with pytest.raises(DataError) as e:
        create_dataset("imagefolder", tmp_path, "train")
    assert str(e.value) == (f"data folder {train} has one class folder (cat); a classifier needs at least two "
                            f"(expected {train}/<class>/<image files>)")
    assert train_main([str(tmp_path), *fast_train_flags(tmp_path / "out")]) == 2
    assert error_line(capsys) == f"gaheads train: {e.value}"


# --------------------------------------------------------------------------- pixel limits
def with_big_image(root: Path, size: int = 16) -> Path:
    """cat/dog with 3 small (12x12) images each; dog/1.png replaced by a size x size one."""
    make_imagefolder(root, classes=("cat", "dog"), per_class=3)
    big = root / "train" / "dog" / "1.png"
    write_image(big, 5, size=size)
    return big


def test_image_over_the_pixel_limit_is_skipped_and_counted(tmp_path):
    big = with_big_image(tmp_path)
    ds = create_dataset("imagefolder", tmp_path, "train", max_pixels=200)
    with pytest.warns(BadImageWarning) as record:
        items = [ds[i] for i in range(len(ds))]
    assert [str(w.message) for w in record] == [
        f"skipping image too large {big}: 16x16 = 256 pixels, over the limit of 200; raise the limit with "
        "--max-image-pixels; using the next readable sample instead"]
    assert ds.skipped == [str(big)] and [t for _, t in items] == [0, 0, 0, 1, 1, 1]
    assert all(img.size == (12, 12) for img, _ in items)
    strict = create_dataset("imagefolder", tmp_path, "train", strict=True, max_pixels=200)
    with pytest.raises(DataError) as e:
        strict[4]
    assert str(e.value) == (f"image too large {big}: 16x16 = 256 pixels, over the limit of 200; raise the limit "
                            "with --max-image-pixels")
    assert create_dataset("imagefolder", tmp_path, "train", max_pixels=256)[4][0].size == (16, 16)


def test_pil_decompression_bomb_error_and_warning_are_skipped_too(tmp_path, monkeypatch):
    big = with_big_image(tmp_path, size=18)  # 324 pixels: over twice the limit below, PIL itself refuses it
    mid = tmp_path / "train" / "cat" / "2.png"
    write_image(mid, 6, size=14)  # 196 pixels: between the limit and twice it, where PIL only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # the 12x12 (144 pixels) images pass
    ds = create_dataset("imagefolder", tmp_path, "train")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert [t for _, t in (ds[i] for i in range(len(ds)))] == [0, 0, 1, 1, 1, 1]
    assert [w.category for w in record] == [Image.DecompressionBombWarning, BadImageWarning, BadImageWarning]
    messages = [str(w.message) for w in record if w.category is BadImageWarning]
    assert messages == [
        f"skipping image too large {mid}: 14x14 = 196 pixels, over the limit of 150; raise the limit with "
        "--max-image-pixels; using the next readable sample instead",
        f"skipping image too large {big}: over twice PIL's limit of 150 pixels; raise the limit with "
        "--max-image-pixels; using the next readable sample instead"]
    assert ds.skipped == [str(mid), str(big)]


def test_train_skips_and_counts_an_image_over_max_image_pixels(tmp_path, capsys, monkeypatch):
    # the limit stays above the 32x32 crops the transforms make: older Pillow checks crops against it too
    big = with_big_image(tmp_path, size=48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the command sets it
    with warnings.catch_warnings(), pytest.warns(BadImageWarning, match="skipping image too large"):
        assert train_main([str(tmp_path), *fast_train_flags(tmp_path / "out"), "--max-image-pixels", "600"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_images"] == 1 and summary["skipped_files"] == [str(big)] and summary["steps"] == 3
    assert "; 1 unreadable image(s) skipped so far" in capsys.readouterr().out


def test_predict_and_validate_flag_raises_or_lowers_the_limit(tmp_path, capsys, monkeypatch):
    ckpt, _ = make_checkpoint(tmp_path / "last.pth", class_names=["cat", "dog"])
    big = with_big_image(tmp_path / "data", size=48)  # limits above the 32x32 crops, as in the test above
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # restored after the test, as the commands change it
    with warnings.catch_warnings():  # the commands also silence PIL's own warning process-wide
        assert predict_cli.main(["--checkpoint", str(ckpt), str(big)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"gaheads predict: skipped {big}: image too large: over twice PIL's limit of 100 pixels; "
                       "raise the limit with --max-image-pixels", "gaheads predict: no image could be read"]
        assert predict_cli.main(["--checkpoint", str(ckpt), str(big), "--max-image-pixels", "3000", "--json"]) == 0
        assert [r["image"] for r in json.loads(capsys.readouterr().out)] == [str(big)]
        val_big = tmp_path / "data" / "val" / "cat" / "0.png"
        write_image(val_big, 8, size=48)
        argv = [str(tmp_path / "data"), "--checkpoint", str(ckpt), "--json", "--max-image-pixels", "600"]
        with pytest.warns(BadImageWarning):
            assert validate_cli.main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["skipped"] == [str(val_big)] and report["samples"] == 6


# --------------------------------------------------------------------------- numeric flags
BAD_FLAGS = [
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    (["--lr=-1e-3"], "argument --lr: must be a finite number > 0, got '-1e-3'"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
    (["--lr", "fast"], "argument --lr: must be a finite number > 0, got 'fast'"),
    (["--weight-decay", "-0.05"], "argument --weight-decay: must be a finite number >= 0, got '-0.05'"),
    (["--min-lr=-inf"], "argument --min-lr: must be a finite number >= 0, got '-inf'"),
    (["--smoothing", "nan"], "argument --smoothing: must be a finite number in [0, 1], got 'nan'"),
    (["--hflip", "1.5"], "argument --hflip: must be a finite number in [0, 1], got '1.5'"),
    (["--model-ema-decay", "1.01"], "argument --model-ema-decay: must be a finite number in [0, 1], got '1.01'"),
    (["--mean", "0.5", "nan", "0.5"], "argument --mean: must be a finite number, got 'nan'"),
    (["--std", "0.5", "0", "0.5"], "argument --std: must be a finite number > 0, got '0'"),
    (["--GA_lam", "inf"], "argument --GA_lam/--GA-lam: must be a finite number, got 'inf'"),
    (["--clip-grad", "nan"], "argument --clip-grad: must be a finite number > 0, got 'nan'"),
    (["--max-image-pixels", "-1"], "argument --max-image-pixels: must be a whole number >= 0, got '-1'"),
    (["--max-image-pixels", "1e9"], "argument --max-image-pixels: must be a whole number >= 0, got '1e9'"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_non_finite_or_out_of_range_flags_are_flag_errors(flags, message, tmp_path, capsys):
    assert train_main(["--dataset", "mnist5k", *flags, "--output", str(tmp_path / "out")]) == 2
    assert error_line(capsys) == f"gaheads train: {message}"
    assert not (tmp_path / "out").exists()


def test_non_finite_value_in_a_config_file_is_named(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: mnist5k\nlr: .nan\n")
    assert train_main(["-c", str(cfg), "--output", str(tmp_path / "out")]) == 2
    assert error_line(capsys) == f"gaheads train: config file {cfg}: lr: must be a finite number > 0, got nan"


def test_predict_flag_error_exits_2():
    with pytest.raises(SystemExit) as e:
        predict_cli.main(["--checkpoint", "x.pth", "img.png", "--max-image-pixels", "nan"])
    assert e.value.code == 2


def test_pixel_limit_zero_means_none(tmp_path):
    with_big_image(tmp_path, size=20)
    img = create_dataset("imagefolder", tmp_path, "train", max_pixels=0)[4][0]
    assert img.size == (20, 20) and np.asarray(img).dtype == np.uint8
