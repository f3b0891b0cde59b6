"""Checkpoints and weights on disk: atomic writes, verified reads, rebuilding a model from its config.

Two formats:
- a training checkpoint (``torch.save`` of a dict, FORMAT key ``gaheads-checkpoint/1``) with
  ``model_config``, ``model`` (state dict), ``data_config``, ``class_names`` and whatever the
  trainer adds (optimizer, scheduler, scaler, ema, epoch, step, rng, args, metrics);
- released weights: ``NAME.safetensors`` plus ``NAME.json`` holding ``model_config``,
  ``data_config`` and ``class_names`` — enough for ``load`` without the training code.

``model_config`` is ``{"name": registered model name, "kwargs": constructor kwargs}``.

Reading never runs code from the file: training checkpoints are opened with
``torch.load(weights_only=True)`` (tensors and plain containers only; nothing is allow-listed
beyond torch's own defaults), and everything written is first reduced to such data
(``plain_data``). A file that needs anything else is refused with a one-line CheckpointError;
checkpoints of earlier releases that pickled NumPy RNG states are converted once, from a trusted
source, with ``gaheads upgrade-checkpoint OLD --trust --output NEW``.

Writes are atomic (``atomic_write``); a storage fault while writing (disk full, file-size
limit, I/O error, read-only filesystem) raises StorageError, one line naming the file and the
free space left, with the previous file untouched and the temp file removed.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

FORMAT = "gaheads-checkpoint/1"
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode")
STORAGE_EXIT = 4  # exit status of every command when an output file cannot be written
# what a run folder means where a checkpoint is expected: its latest state (what --resume continues),
# or, for inference only, the released weights when the folder has no last.pth
RUN_CHECKPOINT, RUN_WEIGHTS = "last.pth", "model.safetensors"
# constructor arguments that make a model factory read files or the network: never taken from a file
_FETCHING_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                    "backbone_checkpoint", "cache_dir")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle would call code (anything beyond tensors and plain containers): not opened."""


class StorageError(OSError):
    """An output file could not be written: disk full, file-size limit, I/O error, read-only filesystem, ...

    ``str()`` is one line naming the file, the reason and the free space left there. The file
    that was at ``path`` before is untouched. Commands exit with ``exit_code`` (4).
    """

    exit_code = STORAGE_EXIT

    def __init__(self, message: str, errno_: int | None, path: Path) -> None:
        super().__init__(errno_, message)
        self.message, self.path = message, path

    def __str__(self) -> str:
        return self.message


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> str:
    """Free space on the filesystem holding ``path`` (its nearest existing folder), e.g. ``"3.2 MiB free"``."""
    folder = Path(path)
    try:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return f"{human_bytes(shutil.disk_usage(folder).free)} free"
    except OSError:  # a failing filesystem may not even answer this
        return "free space unknown"


def storage_error(path: str | os.PathLike, err: OSError, what: str = "", existed: bool = False,
                  leftover: str | None = None) -> StorageError:
    """The one-line StorageError for ``err`` met while writing ``path`` (``what``: e.g. "checkpoint")."""
    path = Path(path)
    label = f"{what} " if what else ""
    reason = err.strerror or str(err) or type(err).__name__
    notes = [free_space(path)]
    if existed:
        notes.append(f"the previous {what or 'file'} is intact")
    if leftover:
        notes.append(f"the temp file {leftover} could not be removed")
    return StorageError(f"cannot write {label}{path}: {reason} ({'; '.join(notes)})", err.errno, path)


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EROFS, errno.EDQUOT})


def as_storage_error(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` as a one-line StorageError when it is a storage fault (ENOSPC, EFBIG, EIO, EROFS, EDQUOT)
    met writing ``path`` (or the file it names); any other OSError unchanged."""
    if isinstance(err, StorageError) or err.errno not in STORAGE_ERRNOS:
        return err
    return storage_error(err.filename or path, err)


# how Rust writers (safetensors) report an errno: "os error 28" (0.5 and later), "code: 28" (0.4)
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|Os \{ code: (\d+)")
# how torch's C++ zip writer reports a failed write: the errno itself is lost
_TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def _as_os_error(e: BaseException) -> OSError | None:
    """The OSError behind a failed write, also when a C++/Rust writer wrapped it in another exception."""
    if isinstance(e, OSError):
        return e
    match = _OS_ERROR_IN_TEXT.search(str(e))
    if match:
        code = int(match.group(1) or match.group(2))
        return OSError(code, os.strerror(code))
    if isinstance(e, RuntimeError) and any(t in str(e) for t in _TORCH_WRITE_FAILED):
        return OSError(None, "write failed (" + " ".join(str(e).split())[:120] + ")")
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], what: str = "") -> Path:
    """Write ``path`` via ``write(tmp_path)`` to a temp file in the same folder, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a partial file. A
    storage fault (also one a C++/Rust writer reports as another exception) raises StorageError
    naming ``what`` and ``path``; the temp file is removed and the old file kept.
    """
    path = Path(path)
    existed = _exists(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise storage_error(path, e, what, existed) from e
    os.close(fd)
    replaced = False
    try:
        write(tmp)
        # mkstemp makes 0600 (and some writers recreate the file): give it the mode open() would
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        replaced = True  # from here the new file is in place, complete (only the folder's fsync is left)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        leftover = None
        try:
            if not replaced:
                Path(tmp).unlink(missing_ok=True)
        except OSError:  # the filesystem itself failed (I/O error, turned read-only)
            leftover = tmp
        err = _as_os_error(e) if isinstance(e, Exception) and not isinstance(e, StorageError) else None
        if err is None:
            raise
        raise storage_error(path, err, what, existed and not replaced, leftover) from e
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a failing filesystem (EIO) cannot even say
        return False


class _ErrnoWriter:
    """A file wrapper that remembers the OSError of a failed write (torch's zip writer hides it)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj: Any, file: str | os.PathLike) -> None:
    """``torch.save(obj, file)``, raising the OSError (ENOSPC, EFBIG, EIO) when a write fails.

    On a full disk ``torch.save`` to a path raises RuntimeError ("unexpected pos"), not OSError.
    """
    with open(file, "wb") as f:
        writer = _ErrnoWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as e:
            if writer.error is not None:
                raise writer.error from e
            raise


def atomic_save(obj: Any, path: str | os.PathLike, what: str = "checkpoint",
                after_write: Callable[[], None] | None = None) -> Path:
    """``torch.save`` of ``plain_data(obj)``, made atomic; StorageError on a storage fault.

    ``after_write`` runs once the temp file is complete, before it is renamed into place.
    """
    data = plain_data(obj)

    def write(tmp: str) -> None:
        save_torch(data, tmp)
        if after_write is not None:
            after_write()

    return atomic_write(path, write, what)


_PLAIN_LEAVES = frozenset({str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size})


class _NotPlain(TypeError):
    """Raised at the offending value; each container on the way up adds its key (no cost when all is plain)."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind, self.keys = kind, []


def plain_data(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` as data ``torch.load(weights_only=True)`` reads: tensors, numbers, strings, dicts, lists, tuples.

    NumPy arrays become tensors, NumPy scalars numbers, paths strings, an argparse Namespace a
    dict; anything else raises TypeError naming where it sits (it would need code to load).
    Tensors are passed through, not copied.
    """
    try:
        return _plain(obj)
    except _NotPlain as e:
        at = where + "".join(f"[{k!r}]" for k in reversed(e.keys))
        raise TypeError(f"{at} is a {e.kind.__module__}.{e.kind.__qualname__}, which a safe load cannot read; "
                        "store it as tensors or plain containers") from None


def _plain(obj: Any) -> Any:
    kind = type(obj)
    if kind in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return obj
    if kind is dict or kind is collections.OrderedDict or isinstance(obj, Mapping):
        out = {} if kind is not collections.OrderedDict else collections.OrderedDict()
        for k, v in obj.items():
            try:
                out[_plain(k)] = _plain(v)
            except _NotPlain as e:
                e.keys.append(k)
                raise
        return out
    if kind is list or kind is tuple or isinstance(obj, (set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        out_items = []
        for i, v in enumerate(items):
            try:
                out_items.append(_plain(v))
            except _NotPlain as e:
                e.keys.append(i)
                raise
        return tuple(out_items) if kind is tuple else out_items
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, argparse.Namespace):
        return _plain(dict(vars(obj)))
    raise _NotPlain(kind)


def model_config(model: nn.Module) -> dict[str, Any]:
    """How ``model`` was built: ``{"name", "kwargs"}`` (set by gaheads' and ``create_model``'s entrypoints)."""
    cfg = getattr(model, "gaheads_config", None)
    if cfg is None:
        name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        cfg = {"name": name, "kwargs": {"num_classes": getattr(model, "num_classes", None)}}
    return json.loads(json.dumps(cfg))  # a plain, JSON-safe copy


def data_config(model: nn.Module) -> dict[str, Any]:
    """The model's preprocessing (input_size, mean, std, crop_pct, interpolation, crop_mode): preprocess's resolver."""
    from .preprocess import resolve_data_config

    return resolve_data_config(model)


def build_model(config: Mapping[str, Any], source: str = "model_config") -> nn.Module:
    """Rebuild an (untrained) model from a ``model_config``; a one-line CheckpointError when it cannot be.

    Arguments that would make the factory read files or the network are refused: a checkpoint
    never makes the loader open other files.
    """
    from .models.factory import create_model

    if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
        raise CheckpointError(f"{source} has no usable model_config (expected {{'name': str, 'kwargs': dict}}, "
                              f"got {type(config).__name__})")
    kwargs = config.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{source}: model_config kwargs is a {type(kwargs).__name__}, expected a dict")
    fetching = [k for k in _FETCHING_KWARGS if kwargs.get(k)]
    if fetching:
        raise CheckpointError(f"{source}: model_config asks for {', '.join(fetching)}, which would read other files "
                              "or the network; refused")
    try:
        return create_model(config["name"], **dict(kwargs))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{source}: cannot build its model {config['name']!r} "
                              f"({type(e).__name__}: {' '.join(str(e).split())})") from e


def resolve_checkpoint(path: str | os.PathLike, training: bool = False) -> Path:
    """The checkpoint file ``path`` names: itself, or for a run folder its ``last.pth``.

    ``--resume RUN_DIR``, ``gaheads.load(RUN_DIR)`` and every ``--checkpoint RUN_DIR`` choose the
    same way. For inference (``training=False``) a folder without ``last.pth`` but with
    ``model.safetensors`` (+ ``model.json``) gives those weights.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    last = path / RUN_CHECKPOINT
    if training or last.is_file():
        return last
    if (path / RUN_WEIGHTS).is_file():
        return path / RUN_WEIGHTS
    raise CheckpointError(f"no checkpoint in run folder {path} (looked for {RUN_CHECKPOINT} and {RUN_WEIGHTS})")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or wrongly shaped key."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: its weights are not a state dict of tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("shape mismatch", shapes), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{label} [{len(keys)}]: {shown}")
        raise CheckpointError(f"{what} does not fit this model ({model_config(model)['name']}): " + "; ".join(parts))


# globals the checkpoints of earlier releases need (their NumPy RNG state): convertible with --trust
_EARLIER_RELEASE_GLOBALS = re.compile(r"^(numpy\.|argparse\.Namespace$|pathlib\.(Posix|Windows)?Path$)")


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a bare pickle refers to, read from its opcodes (nothing is run)."""
    import pickletools

    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: report what was read before the damage
        pass
    return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections.OrderedDict"))]


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The functions/classes the file's pickle would call, found without running it."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint (a bare or legacy pickle)
        pass
    try:
        found = _pickle_globals(path.read_bytes())
    except OSError:
        found = []
    return found or re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))[:1]


def _refusal(path: Path, error: Exception) -> CheckpointError:
    names = _unsafe_globals(path, error)
    if not names:  # not refused for code it would call: damaged, or not a pickle at all
        detail = str(error).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        return CheckpointError(f"{path} is not a readable checkpoint (UnpicklingError: {' '.join(detail.split())})")
    if names and all(_EARLIER_RELEASE_GLOBALS.match(n) for n in names):
        return UnsafeCheckpointError(
            f"{path} was written by an earlier gaheads release: it holds pickled Python objects "
            f"({', '.join(sorted(names)[:3])}), which are not loaded since unpickling can run code; if you trust "
            f"where it came from, convert it once: gaheads upgrade-checkpoint {path} --trust --output NEW.pth")
    shown = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
    return UnsafeCheckpointError(f"{path} is refused: opening it would call {shown}, not just read tensors "
                                 "(only tensors and plain containers are loaded from checkpoint files)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a training checkpoint (a file or a run folder); one-line CheckpointError otherwise.

    Only tensors and plain containers are read (``weights_only=True``): a file whose pickle
    would call anything else is refused before any of it runs.
    """
    path = resolve_checkpoint(path, training=True)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch's note on a bare pickle's protocol would add a line to the refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from e
    except Exception as e:  # truncated zip, wrong file type, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a gaheads checkpoint (expected format {FORMAT!r})")
    return ckpt


def save_weights(model: nn.Module, path: str | os.PathLike, class_names: list[str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors) and its config ``path.with_suffix('.json')``, both atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    meta = {"format": "gaheads-weights/1", "model_config": model_config(model), "data_config": data_config(model),
            "class_names": class_names, **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}), "weights file")
    cfg_path = path.with_suffix(".json")
    atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)), "weights config")
    return path, cfg_path


def load(path: str | os.PathLike, use_ema: bool = True, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model, in eval mode, from a training checkpoint or safetensors + JSON.

    The model carries ``data_config`` (its preprocessing) and ``class_names``. With
    ``use_ema`` a checkpoint's EMA weights are used when it has them.
    """
    path = resolve_checkpoint(path)
    if path.suffix in (".safetensors", ".json"):
        from safetensors.torch import load_file

        weights, cfg_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for p in (weights, cfg_path):
            if not p.is_file():
                raise CheckpointError(f"no {p.suffix} file at {p} (weights need both .safetensors and .json)")
        try:
            meta = json.loads(cfg_path.read_text())
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{cfg_path} is not a readable weights config ({' '.join(str(e).split())})") from e
        if not isinstance(meta, dict):
            raise CheckpointError(f"{cfg_path} is not a gaheads weights config (expected a JSON object)")
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from e
    else:
        meta = load_checkpoint(path, map_location)
        state = meta["ema"] if use_ema and meta.get("ema") is not None else meta["model"]
    if "model_config" not in meta:
        raise CheckpointError(f"{path} has no model_config (the name and arguments of its model), "
                              "so the model cannot be rebuilt")
    model = build_model(meta["model_config"], str(path))
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    model.data_config = meta.get("data_config") or data_config(model)
    model.class_names = meta.get("class_names")
    return model.eval()
