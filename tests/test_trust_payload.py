"""Checkpoint files never run code: a pickle payload is refused, unrun, by every command that opens one.

A payload object's ``__reduce__`` makes unpickling call ``os.system("touch MARKER")``. Loading
such a file must give one line naming the file and what it would call — and leave no marker.
Files of earlier releases (NumPy RNG state pickled in) get a line saying how to convert them,
and ``gaheads upgrade-checkpoint --trust`` converts them into files that load the safe way.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import make_imagefolder, write_image

import gaheads
from gaheads.checkpoint import FORMAT, CheckpointError, load_checkpoint, model_config
from gaheads.cli import main as gaheads_main
from gaheads.models.factory import create_model


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def fast(out: Path, *extra: str) -> list[str]:
    return ["--model", "cct_2_3x2_32", "--epochs", "1", "-b", "2", "--workers", "0", "--no-progress",
            "--aug-repeats", "0", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict[str, Path]:
    """One real 1-epoch training run (its folder and data); trained once for the whole module."""
    root = tmp_path_factory.mktemp("trust")
    data = make_imagefolder(root / "imgs", classes=("cat", "dog"), per_class=3)
    out = root / "run"
    assert gaheads_main(["train", str(data), *fast(out, "--model-ema")]) == 0
    return {"data": data, "run": out, "image": data / "val" / "cat" / "0.png"}


def entry_points(ck: Path, run: dict[str, Path], tmp: Path) -> dict[str, list[str]]:
    """The argv of every command that opens a checkpoint (gaheads.load is tried separately)."""
    return {
        "validate": ["validate", str(run["data"]), "--checkpoint", str(ck)],
        "predict": ["predict", str(run["image"]), "--checkpoint", str(ck)],
        "export": ["export", "--checkpoint", str(ck), "--format", "safetensors",
                   "--output", str(tmp / "e.safetensors")],
        "explain": ["explain", str(run["image"]), "--checkpoint", str(ck), "--output", str(tmp / "x.png")],
        "train": ["train", str(run["data"]), *fast(tmp / "resumed", "--epochs", "2", "--resume", str(ck))],
    }


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    return err.rstrip("\n")


def refusal(ck: Path, calls: str = "posix.system") -> str:
    return (f"{ck} is refused: opening it would call {calls}, not just read tensors "
            "(only tensors and plain containers are loaded from checkpoint files)")


def crafted(kind: str, tmp: Path, run: dict[str, Path], marker: Path) -> Path:
    path = tmp / f"{kind}.pth"
    if kind == "bare-payload":  # the whole file is the payload
        torch.save(Payload(marker), path)
    elif kind == "forged":  # looks like a gaheads checkpoint, weights and all
        m = create_model("cct_2_3x2_32", num_classes=2)
        torch.save({"format": FORMAT, "model_config": model_config(m), "model": m.state_dict(),
                    "note": Payload(marker)}, path)
    else:  # "real-plus-payload": the trainer's own last.pth with a payload added
        ck = torch.load(run["run"] / "last.pth", weights_only=True)
        ck["args"]["resume"] = Payload(marker)
        torch.save(ck, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The test's payload really runs when unpickled without restriction (so its absence below means something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["bare-payload", "forged", "real-plus-payload"])
def test_payload_runs_through_no_entry_point(kind, real_run, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    ck = crafted(kind, tmp_path, real_run, marker)
    line = refusal(ck)
    with pytest.raises(CheckpointError) as e:
        gaheads.load(ck)
    assert str(e.value) == line
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)
    for name, argv in entry_points(ck, real_run, tmp_path).items():
        assert gaheads_main(argv) == 2, name
        assert one_line(capsys) == f"gaheads {name}: {line}", name
    assert not marker.exists()
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "x.png").exists()


def test_a_bare_pickle_payload_is_refused(real_run, tmp_path, capsys):
    """Not a torch zip at all: the legacy-format path refuses it too."""
    marker = tmp_path / "MARKER"
    ck = tmp_path / "legacy.pth"
    ck.write_bytes(pickle.dumps(Payload(marker)))
    assert gaheads_main(["validate", str(real_run["data"]), "--checkpoint", str(ck)]) == 2
    assert one_line(capsys) == f"gaheads validate: {refusal(ck)}"  # torch's protocol warning is not shown either
    with pytest.raises(CheckpointError) as e:
        gaheads.load(ck)
    assert str(e.value) == refusal(ck)
    assert not marker.exists()


def test_trainer_checkpoints_hold_only_tensors_and_plain_data(real_run):
    """What training writes loads with torch's own weights_only=True, with nothing allow-listed."""
    for name in ("last.pth", "best.pth"):
        ck = torch.load(real_run["run"] / name, weights_only=True)
        assert ck["format"] == FORMAT and ck["ema"] is not None
        npy = ck["rng"]["numpy"]
        assert npy["kind"] == "MT19937" and npy["key"].dtype == torch.int64 and npy["key"].shape == (624,)
        assert ck["rng"]["python"]["state"].shape == (625,)
        assert list(ck["args"]["scale"]) == [0.08, 1.0] and ck["args"]["model"] == "cct_2_3x2_32"


def test_rng_state_round_trips_through_a_safe_load(tmp_path):
    import random

    from gaheads.checkpoint import atomic_save
    from gaheads.train.rng import rng_state, set_rng_state

    cpu = torch.device("cpu")
    np.random.seed(3), random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    atomic_save({"rng": rng_state(cpu)}, tmp_path / "rng.pth")
    expected = (np.random.standard_normal(), np.random.rand(), random.random(), torch.rand(2).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"], cpu)
    assert (np.random.standard_normal(), np.random.rand(), random.random(), torch.rand(2).tolist()) == expected


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def earlier_release(real_run, path: Path) -> Path:
    """A checkpoint as the previous release wrote it: NumPy and Python RNG states pickled as they come."""
    ck = torch.load(real_run["run"] / "last.pth", weights_only=True)
    np.random.seed(7)
    old_rng = {"torch": torch.get_rng_state(), "cuda": None, "numpy": np.random.get_state(),
               "python": __import__("random").getstate()}
    ck["rng"] = {**old_rng, "ranks": [old_rng]}
    torch.save(ck, path)
    return path


def test_earlier_release_checkpoint_says_how_to_convert_then_converts(real_run, tmp_path, capsys):
    old = earlier_release(real_run, tmp_path / "old.pth")
    before = sha(old)
    line = (f"{old} was written by an earlier gaheads release: it holds pickled Python objects "
            f"({np.empty(0).__reduce__()[0].__module__}._reconstruct, numpy.dtype, numpy.ndarray), "
            "which are not loaded since "
            f"unpickling can run code; if you trust where it came from, convert it once: gaheads upgrade-checkpoint "
            f"{old} --trust --output NEW.pth")
    with pytest.raises(CheckpointError) as e:
        gaheads.load(old)
    assert str(e.value) == line
    new = tmp_path / "new.pth"
    assert gaheads_main(["upgrade-checkpoint", str(old), "--output", str(new)]) == 2
    assert one_line(capsys) == (f"gaheads upgrade-checkpoint: {old} holds pickled Python objects; pass --trust to "
                                "convert it (only NumPy arrays, paths and namespaces are rebuilt: no code in the file "
                                "runs)")
    assert not new.exists()

    assert gaheads_main(["upgrade-checkpoint", str(old), "--trust", "--output", str(new)]) == 0
    assert capsys.readouterr().out == (f"wrote {new} (converted to tensors and plain data; it loads with "
                                       "torch.load(weights_only=True))\n")
    assert sha(old) == before  # the old file is left as it was
    ck = torch.load(new, weights_only=True)
    np.random.seed(7)
    assert torch.equal(ck["rng"]["numpy"][1], torch.from_numpy(np.random.get_state()[1]))
    a, b = gaheads.load(new), gaheads.load(real_run["run"] / "last.pth")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # the converted file resumes training (the old-style RNG tuples are restored too)
    out = tmp_path / "resumed"
    assert gaheads_main(["train", str(real_run["data"]), *fast(out, "--epochs", "2", "--resume", str(new))]) == 0
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


def test_upgrade_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save([1, 2], bad)
    assert gaheads_main(["upgrade-checkpoint", str(bad), "--trust", "--output", str(tmp_path / "n.pth")]) == 2
    assert one_line(capsys) == (f"gaheads upgrade-checkpoint: {bad} is not a gaheads checkpoint (expected format "
                                f"{FORMAT!r})")
    assert not (tmp_path / "n.pth").exists()


@pytest.mark.parametrize("kwarg", ["checkpoint_path", "pretrained"])
def test_model_config_that_would_read_other_files_is_refused(kwarg, tmp_path, capsys):
    """model_config kwargs come from the file: none may make the factory open files or the network."""
    m = create_model("cct_2_3x2_32", num_classes=2)
    cfg = {"name": "cct_2_3x2_32", "kwargs": {"num_classes": 2, kwarg: str(tmp_path / "evil.pth") if kwarg ==
                                               "checkpoint_path" else True}}
    ck = tmp_path / "cfg.pth"
    torch.save({"format": FORMAT, "model_config": cfg, "model": m.state_dict()}, ck)
    with pytest.raises(CheckpointError) as e:
        gaheads.load(ck)
    assert str(e.value) == (f"{ck}: model_config asks for {kwarg}, which would read other files or the network; "
                            "refused")
    write_image(tmp_path / "a.png", seed=1)
    assert gaheads_main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ck)]) == 2
    assert one_line(capsys) == f"gaheads predict: {e.value}"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch upgrade-ran-code",))


def test_upgrade_with_trust_still_refuses_a_file_that_would_run_code(tmp_path, capsys, monkeypatch):
    """A real crafted pickle: even with --trust, only NumPy arrays, paths and namespaces are rebuilt."""
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"format": FORMAT, "model": {}, "payload": _RunsCode()}, evil)
    assert gaheads_main(["upgrade-checkpoint", str(evil), "--trust", "--output", str(tmp_path / "n.pth")]) == 2
    assert "is not a readable checkpoint (UnpicklingError" in capsys.readouterr().err
    assert not (tmp_path / "upgrade-ran-code").exists() and not (tmp_path / "n.pth").exists()
