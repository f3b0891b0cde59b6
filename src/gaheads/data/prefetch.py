"""Device-side input normalisation: workers hand over uint8 images, the device does the float work.

With ``create_transform(..., use_prefetcher=True)`` the workers stop after the augmentations
that need the PIL image and return uint8 tensors (B, C, H, W): a quarter of float32's bytes
through the workers' shared memory, the pinned staging buffers and the host-to-device copy,
and no per-pixel float work on the CPU cores. :class:`DevicePrefetcher` then

- copies the next batch to the device on a side CUDA stream (non-blocking, from pinned memory)
  while the model works on the current one,
- converts it to float32 and normalises it there, ``(x - 255·mean) / (255·std)``,
- optionally makes it channels-last and applies timm's random erasing on the device.

Mixup / CutMix are not done here: the trainer applies timm's ``Mixup`` to the batch after it
reached the device, so they already run there. Random erasing draws its boxes from the global
RNGs when a batch is handed out, not when it is prefetched, so the draws happen in step order
and a resumed run draws the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from timm.data.random_erasing import RandomErasing


def normalization_constants(mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """255·mean and 255·std as (1, C, 1, 1) tensors on ``device``: the uint8-scale constants."""
    m = torch.tensor([255.0 * v for v in mean], dtype=dtype, device=device).view(1, -1, 1, 1)
    s = torch.tensor([255.0 * v for v in std], dtype=dtype, device=device).view(1, -1, 1, 1)
    return m, s


def normalize_uint8(x: torch.Tensor, mean255: torch.Tensor, std255: torch.Tensor,
                    channels_last: bool = False) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float (B, C, H, W), ``(x - mean255) / std255``.

    Equals torchvision's ToTensor + Normalize, ``(x / 255 - mean) / std``, up to float rounding.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = x.to(dtype=mean255.dtype, memory_format=fmt)
    return y.sub_(mean255).div_(std255)


class DevicePrefetcher:
    """Iterate a loader of ``(uint8 images (B, C, H, W), targets (B,))`` as normalised device batches.

    ``len()``, ``sampler`` and ``dataset`` are the wrapped loader's. On CUDA the copy and
    normalisation of batch k+1 are queued on a side stream before batch k is handed out; the
    consuming stream waits for that stream before using a batch. Elsewhere batches are
    converted when asked for.
    """

    def __init__(self, loader: Iterable, device: torch.device | str, mean: Sequence[float], std: Sequence[float],
                 channels_last: bool = False, re_prob: float = 0.0, re_mode: str = "pixel", re_count: int = 1,
                 dtype: torch.dtype = torch.float32) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.mean255, self.std255 = normalization_constants(mean, std, self.device, dtype)
        self.random_erasing = (RandomErasing(re_prob, mode=re_mode, max_count=re_count, device=str(self.device))
                               if re_prob > 0 else None)
        self._stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # sampler, dataset, batch_size, ...
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _convert(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalize_uint8(x, self.mean255, self.std255, self.channels_last)
        elif self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.random_erasing is not None:
            x = self.random_erasing(x)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type != "cuda":
            for x, y in self.loader:
                yield self._finish(*self._convert(x, y))
            return
        if self._stream is None:
            # one stream for the wrapper's life: the caching allocator keeps blocks per stream
            self._stream = torch.cuda.Stream(device=self.device)
        side = self._stream
        consumer = torch.cuda.current_stream(self.device)
        pending: tuple[torch.Tensor, torch.Tensor] | None = None
        for x, y in self.loader:
            # memory the consumer freed may be handed out below: wait for its queued work first
            side.wait_stream(consumer)
            with torch.cuda.stream(side):
                ready = self._convert(x, y)
            if pending is not None:
                yield self._finish(*pending)
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_stream(side)
            for t in ready:
                t.record_stream(consumer)  # made on the side stream, used on the consumer's
            pending = ready
        if pending is not None:
            yield self._finish(*pending)
