"""Real storage faults while writing outputs: one line naming the file and the free space, nothing lost.

The faults are made real, never mocked:
- EFBIG: a subprocess lowers RLIMIT_FSIZE (with SIGXFSZ ignored, so writes fail instead of killing it);
- ENOSPC: a small tmpfs filled to the last byte (mounting needs root; skipped with the reason otherwise);
- EROFS: the same tmpfs remounted read-only;
- EIO: an ext4 image on a loop device, shut down with the EXT4_IOC_SHUTDOWN ioctl (every operation then
  fails with EIO), remounted afterwards to check what survived.
Each writer of a training run's outputs is tried: checkpoint, safetensors (+ JSON config), metrics CSV,
curves PNG, summary JSON and the steps.csv log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from data_fixtures import make_imagefolder

from gaheads.checkpoint import FORMAT, StorageError, free_space, load_checkpoint, model_config
from gaheads.train.checkpointing import CheckpointWriteError
from gaheads.train.cli import main as train_main

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2

# every writer of a run's outputs, with the file it writes and the label its message uses
WRITERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from gaheads.checkpoint import FORMAT, model_config, save_weights
    from gaheads.models.factory import create_model
    from gaheads.train.run_log import append_text, epoch_columns, plot_curves, write_csv, write_json
    from gaheads.train.checkpointing import save_checkpoint

    torch.manual_seed(0)
    MODEL = create_model("cct_2_3x2_32", num_classes=2)
    COLS = epoch_columns(1, False)
    ROWS = [{c: 1.0 / (i + 1) for c in COLS} | {"epoch": i + 1} for i in range(400)]

    def writers(d: Path):
        return {
            "checkpoint": (d / "last.pth", lambda: save_checkpoint(
                {"format": FORMAT, "model_config": model_config(MODEL), "model": MODEL.state_dict()}, d / "last.pth")),
            "safetensors": (d / "model.safetensors", lambda: save_weights(MODEL, d / "model.safetensors", ["a", "b"])),
            "csv": (d / "metrics.csv", lambda: write_csv(d / "metrics.csv", COLS, ROWS)),
            "png": (d / "curves.png", lambda: plot_curves(d / "curves.png", ROWS[:40], 1)),
            "json": (d / "summary.json", lambda: write_json(d / "summary.json", {"rows": ROWS})),
            "log": (d / "steps.csv", lambda: append_text(d / "steps.csv", "1,1,0.5,0.5,0.0,0.001\\n" * 3000)),
        }
""")
LABELS = {"checkpoint": "checkpoint ", "safetensors": "weights file ", "csv": "", "png": "", "json": "", "log": ""}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def run_writers(folder: Path, limit: int | None = None) -> dict[str, str]:
    """Write every output once into ``folder`` (in a subprocess), then, under ``RLIMIT_FSIZE = limit``,
    once more; the messages of the second writes, by writer."""
    script = WRITERS + textwrap.dedent(f"""
        import resource, signal
        d = Path({str(folder)!r})
        for name, (path, write) in writers(d).items():
            write()
        limit = {limit!r}
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        import hashlib
        before = {{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}}
        out = {{}}
        for name, (path, write) in writers(d).items():
            try:
                write()
                out[name] = "written"
            except OSError as e:  # StorageError
                out[name] = f"{{type(e).__name__}} {{e.exit_code}}: {{e}}"
            except RuntimeError as e:  # CheckpointWriteError
                out[name] = f"{{type(e).__name__}} {{e.exit_code}}: {{e}}"
        after = {{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}}
        print(json.dumps({{"messages": out, "unchanged": before == after}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def in_process_writers(folder: Path) -> dict:
    """The writers of WRITERS, run in this process: {name: (path, write)}."""
    scope: dict = {}
    exec(compile(WRITERS, "writers", "exec"), scope)
    return scope["writers"](folder)


PATHS = {"checkpoint": "last.pth", "safetensors": "model.safetensors", "csv": "metrics.csv", "png": "curves.png",
         "json": "summary.json", "log": "steps.csv"}


def head_and_notes(folder: Path, name: str, reason: str) -> tuple[str, str]:
    """The message's fixed start, and its note after the free space (a log is appended to, not replaced)."""
    kind = "CheckpointWriteError" if name == "checkpoint" else "StorageError"
    intact = f"; the previous {LABELS[name].strip() or 'file'} is intact" if name != "log" else ""
    return f"{kind} 4: cannot write {LABELS[name]}{folder / PATHS[name]}: {reason} (", f"{intact})"


def expected(folder: Path, name: str, reason: str, free: str) -> str:
    head, notes = head_and_notes(folder, name, reason)
    return f"{head}{free}{notes}"


# --------------------------------------------------------------------------- EFBIG: file-size limit
def test_file_size_limit_on_every_output(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    result = run_writers(folder, limit=16 * 1024)
    assert sorted(result["messages"]) == sorted(PATHS)
    for name, msg in result["messages"].items():
        head, notes = head_and_notes(folder, name, "File too large")
        # the main disk is shared with other processes: its free space is checked as a pattern
        assert re.fullmatch(re.escape(head) + r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free" + re.escape(notes), msg), msg
    assert result["unchanged"]  # every earlier file (the log too: nothing fitted under the limit) as it was
    assert temp_files(folder) == []
    assert load_checkpoint(folder / "last.pth")["format"] == FORMAT


# --------------------------------------------------------------------------- tmpfs: ENOSPC, EROFS
@contextlib.contextmanager
def mounted(kind: str, target: Path, *args: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", *args, target], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here ({proc.stderr.strip() or proc.returncode}); needs root")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


def fill(folder: Path) -> None:
    """Write a filler file until the filesystem is full."""
    with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: each write meets the disk itself
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass


def try_writers(folder: Path) -> dict[str, str]:
    out = {}
    for name, (_, write) in in_process_writers(folder).items():
        try:
            write()
            out[name] = "written"
        except (StorageError, CheckpointWriteError) as e:
            out[name] = f"{type(e).__name__} {e.exit_code}: {e}"
    return out


def test_disk_full_on_every_output(tmp_path):
    with mounted("tmpfs", tmp_path / "mnt", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as folder:
        for _, (_, write) in in_process_writers(folder).items():
            write()
        (folder / "steps.csv").write_text("step\n")  # a small log; the append below hits the full disk
        before = hashes(folder)
        fill(folder)
        messages = try_writers(folder)
        free = free_space(folder)
        assert free == "0 B free"
        for name, msg in messages.items():
            assert msg == expected(folder, name, "No space left on device", free), name
        assert temp_files(folder) == []
        after = hashes(folder)
        after.pop("filler")
        after.pop("steps.csv"), before.pop("steps.csv")
        assert (folder / "steps.csv").read_text().startswith("step\n")  # a log keeps its lines (the last may be cut)
        assert after == before  # checkpoint, weights, CSV, PNG and JSON all as they were
        assert load_checkpoint(folder / "last.pth")["format"] == FORMAT


def test_read_only_filesystem_on_every_output(tmp_path):
    with mounted("tmpfs", tmp_path / "mnt", "-t", "tmpfs", "-o", "size=8m", "tmpfs") as folder:
        for _, (_, write) in in_process_writers(folder).items():
            write()
        before = hashes(folder)
        proc = subprocess.run(["mount", "-o", "remount,ro", folder], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        messages = try_writers(folder)
        free = free_space(folder)
        for name, msg in messages.items():
            assert msg == expected(folder, name, "Read-only file system", free), name
        assert temp_files(folder) == [] and hashes(folder) == before


def test_io_error_on_every_output(tmp_path):
    """EIO from a real filesystem: ext4 shut down under the writers; after a remount the old files are there."""
    if not (shutil.which("mkfs.ext4") and shutil.which("losetup")):
        pytest.skip("needs mkfs.ext4 and loop devices")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    proc = subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "ext4"
    with mounted("loop-mounted ext4", target, "-o", "loop", image) as folder:
        for _, (_, write) in in_process_writers(folder).items():
            write()
        os.sync()
        before = hashes(folder)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        messages = try_writers(folder)
        free = free_space(folder)
        for name, msg in messages.items():
            assert msg == expected(folder, name, "Input/output error", free), name
    with mounted("loop-mounted ext4", target, "-o", "loop", image) as folder:
        assert temp_files(folder) == [] and hashes(folder) == before
        assert load_checkpoint(folder / "last.pth")["format"] == FORMAT


# --------------------------------------------------------------------------- a training run on a full disk
def fast(out: Path, *extra: str) -> list[str]:
    return ["--model", "cct_2_3x2_32", "--epochs", "1", "-b", "2", "--workers", "0", "--no-progress",
            "--aug-repeats", "0", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--output", str(out), *extra]


def test_disk_full_while_training_exits_4_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3)
    first = tmp_path / "first"
    assert train_main([str(data), *fast(first)]) == 0
    size = (first / "last.pth").stat().st_size
    # room for the epoch-1 checkpoint and half of another: the epoch-2 write runs out of space mid-file
    pages = (size + size // 2) // 4096 + 16
    with mounted("tmpfs", tmp_path / "mnt", "-t", "tmpfs", "-o", f"size={pages * 4096}", "tmpfs") as disk:
        out = disk / "run"
        out.mkdir()
        shutil.copyfile(first / "last.pth", out / "last.pth")
        before = sha(out / "last.pth")
        capsys.readouterr()
        assert train_main([str(data), *fast(out, "--epochs", "2", "--resume", str(out / "last.pth"))]) == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err == (f"gaheads train: cannot write checkpoint {out / 'last.pth'}: No space left on device "
                       f"({free_space(out)}; the previous checkpoint is intact)\n")
        assert sha(out / "last.pth") == before
        assert load_checkpoint(out / "last.pth")["epoch"] == 1
        assert temp_files(out) == []


def test_storage_error_keeps_errno_and_exit_code(tmp_path):
    """What callers can rely on: an OSError subclass with the errno, the path and exit code 4."""
    with mounted("tmpfs", tmp_path / "mnt", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as folder:
        fill(folder)
        from gaheads.checkpoint import atomic_save

        m = torch.nn.Linear(64, 64)
        with pytest.raises(StorageError) as e:
            atomic_save({"format": FORMAT, "model_config": model_config(m), "model": m.state_dict()},
                        folder / "x.pth")
        assert e.value.errno == errno.ENOSPC and e.value.path == folder / "x.pth" and e.value.exit_code == 4
        assert isinstance(e.value.__cause__, OSError)  # torch's RuntimeError is not what the caller sees
        assert temp_files(folder) == []
