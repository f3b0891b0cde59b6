"""Loaders: batches are a pure function of (seed, epoch) — same with 0 or 2 workers, after a mid-epoch
resume (start_batch), and across ranks; repeated augmentation; eval sharding."""

import pickle

import numpy as np
import pytest
import torch
from data_fixtures import make_cifar100
from PIL import Image
from timm.data.distributed_sampler import RepeatAugSampler

from gaheads.data import create_dataset, create_loader, create_sampler, create_transform

CFG = dict(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0, interpolation="bicubic")
AUG = dict(scale=(0.3, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5, color_jitter=0.4,
           train_interpolation="random")


@pytest.fixture
def train_set(tmp_path):
    make_cifar100(tmp_path, n_train=20, n_test=7)
    return create_dataset("cifar100", tmp_path, "train", transform=create_transform(CFG, True, **AUG))


def epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_same_batches_with_0_or_2_workers_and_trainer_rng_untouched(train_set):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    inline = epoch_batches(create_loader(train_set, 4, True, num_workers=0, seed=7), epoch=1)
    assert torch.equal(torch.rand(3), expected_next)  # loading did not consume the global torch RNG
    workers = epoch_batches(create_loader(train_set, 4, True, num_workers=2, seed=7), epoch=1)
    assert len(inline) == 5 and inline[0][0].shape == (4, 3, 16, 16)
    assert_same(inline, workers)


def test_epochs_and_seeds_change_order_and_augmentation(train_set):
    loader = create_loader(train_set, 20, True, seed=7)
    (x1, y1), = epoch_batches(loader, 1)
    (x1b, _), = epoch_batches(loader, 1)
    (x2, y2), = epoch_batches(loader, 2)
    (x3, y3), = epoch_batches(create_loader(train_set, 20, True, seed=8), 1)
    assert torch.equal(x1, x1b)
    assert not torch.equal(y1, y2) and not torch.equal(y1, y3)  # the order changes
    # the same samples get other augmentations: compare each image across epochs by its sample index
    order1 = list(create_sampler(train_set, 20, True, seed=7).inner)
    sampler = create_sampler(train_set, 20, True, seed=7)
    sampler.set_epoch(2)
    order2 = list(sampler.inner)
    assert sorted(order1) == sorted(order2) == list(range(20))
    pos2 = {idx: p for p, idx in enumerate(order2)}
    for p, idx in enumerate(order1):
        assert not torch.equal(x1[p], x2[pos2[idx]])


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset, self.loaded, self.classes = dataset, [], dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.loaded.append(i)
        return self.dataset[i]


def test_start_batch_resumes_mid_epoch_without_loading_skipped_batches(train_set):
    full = epoch_batches(create_loader(train_set, 3, True, seed=5), epoch=4)
    assert len(full) == 6  # 20 samples, drop_last: 6 batches of 3
    counting = CountingDataset(train_set)
    resumed = create_loader(counting, 3, True, seed=5, start_batch=2)
    resumed.sampler.set_epoch(4)
    assert len(resumed) == 4 and resumed.sampler.epoch_batches() == 6
    assert_same(epoch_batches(resumed, 4), full[2:])
    assert len(counting.loaded) == 4 * 3  # batches 0 and 1 were never loaded
    # the next pass is a whole epoch again
    assert len(resumed) == 6 and len(epoch_batches(resumed, 5)) == 6


def test_repeated_augmentation_uses_timm_sampler_with_distinct_draws(train_set):
    loader = create_loader(train_set, 6, True, num_repeats=3, seed=1)
    assert isinstance(loader.sampler.inner, RepeatAugSampler)
    loader.sampler.set_epoch(0)
    pairs = list(loader.sampler)
    assert len(pairs) == 20  # timm: num_repeats x N spread over ranks, ~N per epoch in all
    idx = [i for i, _ in pairs]
    assert idx[0::3][:6] == idx[1::3][:6] == idx[2::3][:6]  # each image 3 times in a row
    # repeats of one image are augmented differently
    (x, _), = [b for _, b in zip(range(1), loader)]
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    assert_same(epoch_batches(loader, 0), epoch_batches(create_loader(train_set, 6, True, num_repeats=3, seed=1), 0))


@pytest.mark.parametrize("num_repeats", [0, 3])
def test_two_ranks_deal_the_single_process_epoch(train_set, num_repeats):
    def draws(world, rank):
        s = create_sampler(train_set, 2, True, num_replicas=world, rank=rank, num_repeats=num_repeats, seed=9)
        s.set_epoch(3)
        return list(s)

    single, r0, r1 = draws(1, 0), draws(2, 0), draws(2, 1)
    interleaved = [p for pair in zip(r0, r1) for p in pair]
    # same global order and the same per-sample augmentation seeds, whatever the world size
    assert interleaved == single[: len(interleaved)] and len(r0) == len(r1)


def test_eval_shards_cover_every_sample_once(tmp_path):
    make_cifar100(tmp_path, n_train=2, n_test=7)
    val = create_dataset("cifar100", tmp_path, "val")
    shards = [[i for i, _ in create_sampler(val, 2, False, num_replicas=2, rank=r)] for r in (0, 1)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    loader = create_loader(val, 3, False, collate_fn=lambda b: [t for _, t in b])
    assert [len(b) for b in loader] == [3, 3, 1]  # sequential, last partial batch kept
    assert [t for b in loader for t in b] == val.targets


def test_distributed_needs_a_process_group(train_set):
    with pytest.raises(RuntimeError, match="needs an initialised torch.distributed process group"):
        create_loader(train_set, 4, True, distributed=True)


def test_epoch_batches_counts_a_whole_epoch(train_set):
    loader = create_loader(train_set, 32, True)
    assert loader.sampler.epoch_batches() == 0 and list(loader) == []  # the trainer refuses this case
    assert loader.sampler.epoch_batches(drop_last=False) == 1
    assert create_loader(train_set, 8, False).sampler.epoch_batches() == 3


def test_loader_dataset_pickles_for_spawned_workers(train_set):
    ds = create_loader(train_set, 4, True).dataset
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.classes == train_set.classes and torch.equal(clone[(3, 11)][0], ds[(3, 11)][0])


def test_randaugment_zero_bit_posterize_gives_black_image_not_an_error():
    transform = create_transform(dict(CFG, input_size=(3, 8, 8)), True, auto_augment="rand-m10-mstd0-inc1")
    augment = next(t for t in transform.transforms if hasattr(t, "ops"))
    posterize = next(op for op in augment.ops if op.name == "PosterizeIncreasing")
    posterize.prob = 1.0
    # 'inc' posterize at magnitude 10 keeps 0 bits: timm + Pillow 13 raised ValueError here
    out = np.asarray(posterize(Image.fromarray(np.full((8, 8, 3), 200, np.uint8))))
    assert out.shape == (8, 8, 3) and (out == 0).all()


@pytest.mark.parametrize("aa", ["augmix-m10-mstd0", "original"])
def test_posterize_is_patched_in_augmix_and_autoaugment(aa):
    transform = create_transform(dict(CFG, input_size=(3, 8, 8)), True, auto_augment=aa)
    augment = next(t for t in transform.transforms if hasattr(t, "ops") or hasattr(t, "policy"))
    ops = augment.ops if hasattr(augment, "ops") else [op for sub in augment.policy for op in sub]
    posterize = [op for op in ops if op.name.startswith("Posterize")]
    assert posterize and all(op.aug_fn.__name__ == "_posterize_any_bits" for op in posterize)
