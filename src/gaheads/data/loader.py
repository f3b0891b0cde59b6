"""Data loaders whose batches are a pure function of (seed, epoch), whatever the workers or resumes.

Two pieces make this work:
- ``EpochSampler`` wraps the index sampler (torch's DistributedSampler, timm's RepeatAugSampler,
  or a strided eval shard), seeds its shuffle from (seed, epoch), and yields ``(index, draw_seed)``
  pairs where ``draw_seed`` hashes (seed, epoch, index, position in the epoch's global order);
  the position tells apart the repeats of one index under repeated augmentation.
  ``start_batch`` slices the index list, so skipped batches are never loaded.
- ``SeededDataset`` receives those pairs and seeds Python's, NumPy's and torch's CPU RNGs from
  ``draw_seed`` around loading + transforming the sample, then restores them, so the random
  augmentation does not depend on which worker ran it and the trainer's own RNG streams are
  left untouched when loading happens in the main process (num_workers=0).
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

_MASK63 = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed hashed from integers (stable across processes, platforms and Python versions)."""
    data = struct.pack(f"<{len(values)}q", *(int(v) & _MASK63 for v in values))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _MASK63


class StridedShardSampler(Sampler[int]):
    """Eval sharding without padding or duplicates: rank r gets indices r, r + W, r + 2W, ...

    Ranks may differ by one sample (and so by one batch); evaluate the un-wrapped model (not the
    DDP wrapper, whose forward may synchronise) and sum the metric counts across ranks.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.num_replicas, self.rank = length, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))

    def set_epoch(self, epoch: int) -> None:  # eval order does not change with the epoch
        pass


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, draw seed)`` for this rank's share of one epoch.

    ``set_epoch(epoch)`` must be called before each epoch. ``start_batch(k)`` (or create_loader's
    ``start_batch``) makes the next pass begin at batch k of the epoch without touching the
    samples before it; later passes start at 0 again. ``len()`` is the number of samples the
    next pass yields; ``epoch_batches()`` is a whole epoch's batch count (for schedulers).
    """

    def __init__(self, inner: Sampler[int], seed: int, num_replicas: int, rank: int, batch_size: int,
                 drop_last: bool = False) -> None:
        self.inner, self.seed, self.num_replicas, self.rank = inner, seed, num_replicas, rank
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch = 0
        self._skip = 0  # samples to skip in the next pass
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # the inner samplers seed their shuffle from their "epoch" alone; give them (seed, epoch)
        self.inner.set_epoch(mix_seed(self.seed, epoch))

    def start_batch(self, k: int) -> None:
        if k < 0:
            raise ValueError(f"start_batch must be >= 0, got {k}")
        self._skip = k * self.batch_size

    def epoch_batches(self, drop_last: bool | None = None) -> int:
        """Batches in a whole epoch on this rank (``drop_last`` None: the loader's setting)."""
        n = len(self.inner)
        drop = self.drop_last if drop_last is None else drop_last
        return n // self.batch_size if drop else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(len(self.inner) - self._skip, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self._skip = self._skip, 0
        indices = list(self.inner)
        for j in range(skip, len(indices)):
            # the three inner samplers all deal the global order round-robin: item j of rank r
            # sits at global position r + j * W
            position = self.rank + j * self.num_replicas
            yield indices[j], mix_seed(self.seed, self.epoch, indices[j], position)


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, draw_seed)]`` loads ``index`` with all RNGs seeded by ``draw_seed``.

    A plain ``ds[index]`` passes straight through. Attributes (``classes``, ``skipped``, ...) are
    those of the wrapped dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "dataset" not in self.__dict__:  # not during unpickling
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[Any]:
        """A batch at once (torch's fetcher calls this when present): the RNG states are saved and
        restored once per batch, as saving NumPy's costs ~0.1 ms."""
        if not any(isinstance(k, tuple) for k in keys):
            return [self.dataset[k] for k in keys]
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            items = []
            for key in keys:
                if isinstance(key, tuple):
                    index, draw_seed = key
                    random.seed(draw_seed)
                    np.random.seed(draw_seed & 0xFFFFFFFF)
                    torch.default_generator.manual_seed(draw_seed)  # CPU only: never reseed the trainer's CUDA RNG
                    items.append(self.dataset[index])
                else:
                    items.append(self.dataset[key])
            return items
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


def _world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 1, 0
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("create_loader(distributed=True) needs an initialised torch.distributed process group")
    return dist.get_world_size(), dist.get_rank()


def create_sampler(dataset: Dataset, batch_size: int, is_training: bool, num_replicas: int = 1, rank: int = 0,
                   num_repeats: float = 0, seed: int = 0, drop_last: bool = False) -> EpochSampler:
    """The EpochSampler ``create_loader`` uses, for an explicit world size and rank.

    Training with ``num_repeats > 0``: timm's RepeatAugSampler (each image ``num_repeats`` times
    per epoch, spread over ranks; like timm, about ``len(dataset)`` samples in all per epoch,
    rounded down to a multiple of 256 when the dataset is that large). Training otherwise:
    torch's DistributedSampler shuffle (padded by wrapping so every rank gets the same count).
    Evaluation: sequential, strided across ranks without padding.
    """
    if is_training and num_repeats and num_repeats > 0:
        # rounding to 256 only from 256 images on: timm before 1.0.20 rounded a smaller dataset
        # down to an epoch of zero samples
        inner: Sampler[int] = RepeatAugSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                               num_repeats=num_repeats,
                                               selected_round=256 if len(dataset) >= 256 else 0)
    elif is_training:
        # seed=0: the (seed, epoch) mix reaches it through set_epoch
        inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=0,
                                   drop_last=False)
    else:
        inner = StridedShardSampler(len(dataset), num_replicas, rank)
    return EpochSampler(inner, seed=seed, num_replicas=num_replicas, rank=rank, batch_size=batch_size,
                        drop_last=drop_last)


def create_loader(dataset: Dataset, batch_size: int, is_training: bool, num_workers: int = 0,
                  distributed: bool = False, num_repeats: float = 0, seed: int = 0, drop_last: bool | None = None,
                  pin_memory: bool = False, start_batch: int = 0, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` with reproducible order and augmentation.

    The sampler is ``create_sampler``'s (world size and rank from torch.distributed when
    ``distributed``). Shuffles depend on (seed, epoch): call ``loader.sampler.set_epoch(epoch)``
    every epoch. ``start_batch=k`` starts the first pass at batch k (mid-epoch resume) without
    loading batches 0..k-1; ``loader.sampler.epoch_batches()`` stays the whole epoch's count.
    ``drop_last`` defaults to True for training, False for evaluation. A training set smaller than
    one batch gives an empty epoch: check ``epoch_batches()`` and refuse it.
    Returns batches of ``(images (B, C, H, W), targets (B,))`` with the default collate.
    """
    world, rank = _world(distributed)
    if drop_last is None:
        drop_last = is_training
    sampler = create_sampler(dataset, batch_size, is_training, world, rank, num_repeats, seed, drop_last)
    if start_batch:
        sampler.start_batch(start_batch)
    return DataLoader(
        SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last,
        persistent_workers=num_workers > 0,
        # own generator: creating an iterator must not consume the trainer's global torch RNG
        generator=torch.Generator().manual_seed(seed),
    )
