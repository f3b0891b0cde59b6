"""Data-loader throughput: gaheads' seeded loader against timm's ``create_loader``, per worker count.

    python benchmarks/gpu_loader.py --out DIR                 # GPU sizes: 224 px, batch 64
    python benchmarks/gpu_loader.py --out DIR --smoke         # tiny, CPU

Both read the same generated JPEG ImageFolder (``DIR/jpeg/train/<class>/*.jpg``, sizes around
ImageNet's) with the GA recipe's training augmentation: RandomResizedCrop(scale 0.08-1, random
interpolation), horizontal flip 0.5, RandAugment rand-m9-mstd0.5-inc1, ImageNet normalisation.
Repeated augmentation is off for both (timm's sampler for it needs a process group).
Three pipelines per worker count, in rotating order:

- ``gaheads``: gaheads.data.create_loader, float images normalised in the workers;
- ``gaheads_prefetch``: the same loader with uint8 images normalised on the device by
  gaheads.data.prefetch.DevicePrefetcher (what ``gaheads train`` does on CUDA);
- ``timm``: timm.data.create_loader, with its own prefetcher on CUDA (uint8 images, normalised
  on the device), without on CPU.

A figure is images per second over the ``2 * workers + 4`` batches after the first
``workers + 1`` (the start-up of the worker processes is reported apart, as ``first_batch_s``),
with a device synchronise at the end, pinned memory on CUDA. Writes DIR/result.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

GA_AUG = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1",
              color_jitter=0.4, train_interpolation="random")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _write_class(args: tuple[Path, int, int, tuple[int, int], int]) -> int:
    folder, cls, count, size, seed = args
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        # smooth colour fields plus noise: JPEG sizes and decode times like photos, not like white noise
        phase = rng.random(3) * 6.28
        img = np.stack([127 + 100 * np.sin(xx / (17 + 7 * c) + yy / (23 + 5 * cls) + phase[c]) for c in range(3)], -1)
        img = (img + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    return count


def make_jpeg_folder(root: Path, images: int, classes: int, size: tuple[int, int], jobs: int = 1) -> Path:
    """root/train/class<c>/<i>.jpg, ``images`` in all; returns root (kept when already complete)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{images} {classes} {size}":
        return root
    per = [images // classes + (c < images % classes) for c in range(classes)]
    tasks = [(root / "train" / f"class{c}", c, n, size, c) for c, n in enumerate(per)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_write_class, tasks))
    else:
        for t in tasks:
            _write_class(t)
    done.write_text(f"{images} {classes} {size}")
    return root


def ours(root: Path, img: int, batch: int, workers: int, device: torch.device, prefetch: bool):
    from gaheads.data import create_dataset, create_loader, create_transform
    from gaheads.data.prefetch import DevicePrefetcher

    cfg = {"input_size": (3, img, img), "mean": MEAN, "std": STD, "crop_pct": 0.875, "interpolation": "bicubic"}
    tf = create_transform(cfg, True, use_prefetcher=prefetch, **GA_AUG)
    ds = create_dataset("imagefolder", root, "train", transform=tf)
    loader = create_loader(ds, batch, True, num_workers=workers, seed=0, pin_memory=device.type == "cuda")
    return DevicePrefetcher(loader, device, MEAN, STD) if prefetch else loader


def timms(root: Path, img: int, batch: int, workers: int, device: torch.device):
    from timm.data import ImageDataset, create_loader

    ds = ImageDataset(str(root / "train"))
    aug = {k: v for k, v in GA_AUG.items() if k != "train_interpolation"}
    return create_loader(ds, input_size=(3, img, img), batch_size=batch, is_training=True, mean=MEAN, std=STD,
                         interpolation="random", num_workers=workers, pin_memory=device.type == "cuda",
                         use_prefetcher=device.type == "cuda", device=device, persistent_workers=False,
                         crop_pct=0.875, **aug)


def measure(loader, batches: int, skip: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    seen, first, start, counted = 0, None, None, 0
    for i, (x, _) in enumerate(loader):
        if first is None:
            sync()
            first = time.perf_counter() - t0
        if i == skip:
            sync()
            start = time.perf_counter()
        elif i > skip:
            counted += x.shape[0]
        seen += 1
        if seen >= batches:
            break
    sync()
    if start is None or counted == 0:
        raise RuntimeError(f"only {seen} batches: nothing left to time after skipping {skip}")
    elapsed = time.perf_counter() - start
    return {"img_s": counted / elapsed, "first_batch_s": first, "timed_images": counted}


def transform_cost(root: Path, img: int, rounds: int = 7, per_round: int = 48) -> dict:
    """Median process CPU ms per image (one thread) of the GA training transform ending in float normalisation
    (``gaheads`` in the workers) and ending in uint8 (``prefetch``), interleaved round by round;
    plus the device-side normalisation of a uint8 batch done on this CPU, per image."""
    import statistics

    from gaheads.data import create_transform
    from gaheads.data.prefetch import normalization_constants, normalize_uint8

    cfg = {"input_size": (3, img, img), "mean": MEAN, "std": STD, "crop_pct": 0.875, "interpolation": "bicubic"}
    tfs = {name: create_transform(cfg, True, use_prefetcher=name == "prefetch", **GA_AUG)
           for name in ("gaheads", "prefetch")}
    files = sorted((root / "train").rglob("*.jpg"))[:per_round]
    images = [Image.open(f).convert("RGB") for f in files]
    cpu: dict[str, list[float]] = {name: [] for name in tfs}
    for r in range(rounds):
        for name, tf in tfs.items():
            torch.manual_seed(r)
            t = time.process_time()
            out = [tf(im) for im in images]
            cpu[name].append((time.process_time() - t) / len(images) * 1e3)
    m, s = normalization_constants(MEAN, STD, "cpu")
    batch = torch.stack(out)
    t = time.process_time()
    for _ in range(rounds):
        normalize_uint8(batch, m, s)
    norm = (time.process_time() - t) / rounds / len(images) * 1e3
    return {"float_ms_per_image": statistics.median(cpu["gaheads"]),
            "uint8_ms_per_image": statistics.median(cpu["prefetch"]),
            "uint8_then_normalise_here_ms_per_image": norm, "images": len(images), "rounds": rounds,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--workers", type=int, nargs="+", default=None)
    p.add_argument("--transform-cost", action="store_true",
                   help="only time the worker-side transform per image (CPU time), float vs uint8 output, at 224 px")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.transform_cost:
        torch.set_num_threads(1)  # as in a DataLoader worker (and no OpenMP spin-waiting in the CPU time)
        cost = transform_cost(make_jpeg_folder(out / "jpeg_cost", 48, 16, (400, 340)), 32 if a.smoke else 224)
        print(json.dumps(cost, indent=1))
        (out / "transform_cost.json").write_text(json.dumps(cost, indent=1))
        return 0
    if a.smoke:
        device = torch.device("cpu")
        img, batch, images, size, workers, jobs = 32, 8, 48, (48, 40), a.workers or [0, 1], 1
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        img, batch, images, size, jobs = 224, 64, 3072, (400, 340), 8
        workers = a.workers or [2, 4, 8, 12]
    t = time.perf_counter()
    root = make_jpeg_folder(out / "jpeg", images, 16, size, jobs)
    result = {"device": str(device), "img_size": img, "batch_size": batch, "images": images,
              "source_size": list(size), "make_data_s": round(time.perf_counter() - t, 1), "rows": []}
    pipelines = ("gaheads", "gaheads_prefetch", "timm")
    for n, w in enumerate(workers):
        row: dict = {"workers": w}
        order = pipelines[n % 3:] + pipelines[:n % 3]  # rotate who goes first
        for name in order:
            if name == "timm":
                loader = timms(root, img, batch, w, device)
            else:
                loader = ours(root, img, batch, w, device, prefetch=name == "gaheads_prefetch")
            batches = min(3 * w + 5, images // batch)
            row[name] = measure(loader, batches, skip=min(w + 1, batches - 2), device=device)
            del loader
        row["gaheads_vs_timm"] = row["gaheads"]["img_s"] / row["timm"]["img_s"]
        row["gaheads_prefetch_vs_timm"] = row["gaheads_prefetch"]["img_s"] / row["timm"]["img_s"]
        result["rows"].append(row)
        print(f"workers {w}: " + "  ".join(f"{k} {row[k]['img_s']:.0f} img/s" for k in pipelines), flush=True)
        (out / "result.json").write_text(json.dumps(result, indent=1))
    result["status"] = "ok"
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
