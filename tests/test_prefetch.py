"""Device-side normalisation (gaheads.data.prefetch) and the trainer's --prefetcher path, on the CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from data_fixtures import make_cifar100
from PIL import Image
from test_reliability_resume import assert_same_run, flags, train_keeping
from torch.utils.data import DataLoader, TensorDataset

from gaheads.data import create_dataset, create_loader, create_transform
from gaheads.data.prefetch import DevicePrefetcher, normalization_constants, normalize_uint8
from gaheads.train import engine
from gaheads.train.cli import main as train_cli
from gaheads.train.config import parse_args

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIG = {"input_size": (3, 32, 32), "mean": MEAN, "std": STD, "crop_pct": 0.9, "interpolation": "bicubic"}


def test_normalize_uint8_equals_to_tensor_then_normalize():
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    m, s = normalization_constants(MEAN, STD, "cpu")
    got = normalize_uint8(x, m, s)
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 5, 7)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)
    black = normalize_uint8(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), m, s).flatten().tolist()
    assert black == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rel=1e-6)
    assert normalize_uint8(x, m, s, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_uint8_transform_plus_prefetcher_gives_the_float_pipeline_batches(tmp_path):
    make_cifar100(tmp_path, n_train=8, n_test=4)
    batches = {}
    for prefetch in (False, True):
        # the seeded loader draws the same crops and flips for both; only the last step differs
        tf = create_transform(CONFIG, True, use_prefetcher=prefetch, auto_augment="rand-m9-mstd0.5-inc1")
        ds = create_dataset("cifar100", tmp_path, "train", transform=tf)
        loader = create_loader(ds, 4, True, seed=0)
        batches[prefetch] = list(DevicePrefetcher(loader, "cpu", MEAN, STD) if prefetch else loader)
        if prefetch:
            assert ds[0][0].dtype == torch.uint8 and ds[0][0].shape == (3, 32, 32)
    assert len(batches[True]) == len(batches[False]) == 2
    for (xa, ya), (xb, yb) in zip(batches[False], batches[True]):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xb, xa, rtol=0, atol=2e-6)


def test_prefetcher_passes_the_loader_through_and_erases_on_the_device():
    x = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    loader = DataLoader(TensorDataset(x, torch.arange(4)), batch_size=2)
    pre = DevicePrefetcher(loader, "cpu", MEAN, STD, channels_last=True, re_prob=1.0, re_mode="const")
    assert len(pre) == 2 and pre.batch_size == 2 and pre.sampler is loader.sampler
    torch.manual_seed(0)
    out = list(pre)
    plain = normalize_uint8(x[:2], *normalization_constants(MEAN, STD, "cpu"))
    for xb, _ in out:
        assert xb.is_contiguous(memory_format=torch.channels_last)
        erased = (xb == 0).all(dim=1)  # 'const' mode writes zeros in every channel of the box
        assert 0 < int(erased.sum()) < 2 * 8 * 8 - 1
        assert torch.equal(xb[~erased.unsqueeze(1).expand_as(xb)], plain[~erased.unsqueeze(1).expand_as(plain)])
    assert [yb.tolist() for _, yb in out] == [[0, 1], [2, 3]]


def _losses(run: Path) -> list[float]:
    with open(run / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_cifar100(root, n_train=16, n_test=8, n_classes=5)
    return root


def test_trainer_with_prefetcher_follows_the_float_pipeline(cifar, tmp_path):
    runs = {}
    for name, extra in (("plain", ["--no-prefetcher"]), ("prefetch", ["--prefetcher", "--channels-last"])):
        runs[name] = tmp_path / name
        engine.train(parse_args([*flags(cifar, runs[name]), "--epochs", "1", *extra]))
    plain, prefetched = _losses(runs["plain"]), _losses(runs["prefetch"])
    assert len(plain) == len(prefetched) == 4
    assert prefetched == pytest.approx(plain, rel=1e-4)


def test_resume_with_prefetcher_and_device_random_erasing_is_exact(cifar, tmp_path):
    extra = ["--prefetcher", "--reprob", "0.5"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    mid = train_keeping(flags(cifar, ref, *extra), at_step=6)
    assert train_cli(flags(cifar, resumed, *extra, "--resume", str(mid))) == 0
    assert_same_run(ref, resumed, from_step=6)


def test_pil_decoded_images_stay_uint8_through_the_train_transform():
    tf = create_transform(CONFIG, True, use_prefetcher=True, auto_augment="rand-m9-mstd0.5-inc1",
                          train_interpolation="random")
    out = tf(Image.new("RGB", (40, 36), (10, 200, 30)))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
