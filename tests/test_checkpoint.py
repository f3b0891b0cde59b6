import pytest
import timm
import torch

import gaheads
from gaheads.checkpoint import FORMAT, CheckpointError, atomic_save, check_state_dict, load_checkpoint, model_config


def test_safetensors_round_trip_identical_logits(tmp_path):
    m = timm.create_model("ga2_cct_2_3x2_32", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    w, cfg = gaheads.save_weights(m, tmp_path / "w.safetensors", class_names=[str(i) for i in range(10)])
    assert w.exists() and cfg.exists()
    m2 = gaheads.load(w)
    assert m2.class_names[3] == "3" and m2.data_config["input_size"] == [3, 32, 32]
    assert torch.equal(m(x), m2(x))


def test_checkpoint_round_trip_and_ema(tmp_path):
    m = timm.create_model("seqattn2_cct_2_3x2_32", num_classes=4)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    path = atomic_save({"format": FORMAT, "model_config": model_config(m), "model": m.state_dict(), "ema": ema},
                       tmp_path / "last.pth")
    assert not list(tmp_path.glob(".*tmp"))
    loaded = gaheads.load(path)
    torch.testing.assert_close(loaded.state_dict()["head.block.gamma1"], ema["head.block.gamma1"])
    raw = gaheads.load(path, use_ema=False)
    torch.testing.assert_close(raw.state_dict()["head.block.gamma1"], m.state_dict()["head.block.gamma1"])


def test_mismatch_lists_keys():
    m = timm.create_model("seqattn2_cct_2_3x2_32", num_classes=10)
    other = timm.create_model("seqattn2_cct_2_3x2_32", num_classes=5).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch \[2\]: head.classifier.bias"):
        check_state_dict(m, other)
    with pytest.raises(CheckpointError, match="missing"):
        check_state_dict(m, timm.create_model("cct_2_3x2_32", num_classes=10).state_dict())


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a gaheads checkpoint"):
        load_checkpoint(other)


# --------------------------------------------------------------------------- one-line errors, run folders, pipes
def multi_head_checkpoint(folder, **extra):
    """``folder/last.pth``: a 2-class SeqAttention CCT (what validate/explain need), weights only."""
    m = timm.create_model("seqattn2_cct_2_3x2_32", num_classes=2)
    payload = {"format": FORMAT, "model_config": model_config(m), "model": m.state_dict(), **extra}
    return atomic_save(payload, folder / "last.pth")


def cli_argvs(ck, data, tmp_path) -> dict[str, list[str]]:
    image = data / "val" / "cat" / "0.png"
    return {
        "validate": ["validate", str(data), "--checkpoint", str(ck), "--json"],
        "predict": ["predict", str(image), "--checkpoint", str(ck), "--json"],
        "export": ["export", "--checkpoint", str(ck), "--format", "safetensors", "--output", str(tmp_path / "e")],
        "explain": ["explain", str(image), "--checkpoint", str(ck), "--output", str(tmp_path / "x.png")],
    }


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def test_checkpoint_without_model_config_is_one_line_everywhere(tmp_path, capsys):
    from data_fixtures import make_imagefolder

    from gaheads.cli import main

    data = make_imagefolder(tmp_path / "imgs", classes=("cat", "dog"), per_class=1)
    m = timm.create_model("seqattn2_cct_2_3x2_32", num_classes=2)
    ck = atomic_save({"format": FORMAT, "model": m.state_dict()}, tmp_path / "noconfig.pth")
    line = f"{ck} has no model_config (the name and arguments of its model), so the model cannot be rebuilt"
    with pytest.raises(CheckpointError) as e:
        gaheads.load(ck)
    assert str(e.value) == line
    for name, argv in cli_argvs(ck, data, tmp_path).items():
        assert main(argv) == 2, name
        assert one_line(capsys) == f"gaheads {name}: {line}"
    # released weights whose JSON lost it
    w, cfg = gaheads.save_weights(m, tmp_path / "w.safetensors")
    cfg.write_text('{"format": "gaheads-weights/1"}')
    with pytest.raises(CheckpointError) as e:
        gaheads.load(w)
    assert str(e.value) == (f"{w} has no model_config (the name and arguments of its model), so the model cannot "
                            "be rebuilt")


def test_run_folder_is_accepted_wherever_a_checkpoint_is(tmp_path, capsys):
    from data_fixtures import make_imagefolder

    from gaheads.checkpoint import resolve_checkpoint
    from gaheads.cli import main

    data = make_imagefolder(tmp_path / "imgs", classes=("cat", "dog"), per_class=1)
    run = tmp_path / "run"
    ck = multi_head_checkpoint(run)
    assert resolve_checkpoint(run) == ck == resolve_checkpoint(run, training=True)  # --resume picks the same
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(gaheads.load(run)(x), gaheads.load(ck)(x), rtol=0, atol=0)
    for name in ("validate", "predict"):
        assert main(cli_argvs(ck, data, tmp_path)[name]) == 0
        by_file = capsys.readouterr().out
        assert main(cli_argvs(run, data, tmp_path)[name]) == 0
        by_folder = capsys.readouterr().out
        assert by_folder == by_file.replace(str(ck), str(run)), name
    for name in ("export", "explain"):
        assert main(cli_argvs(run, data, tmp_path)[name]) == 0, name
    assert (tmp_path / "e.safetensors").is_file() and (tmp_path / "x.png").is_file()
    # --diversity writes next to the checkpoint: inside the run folder, not beside it
    assert main(["validate", str(data), "--checkpoint", str(run), "--diversity"]) == 0
    assert (run / "diversity.json").is_file() and not (tmp_path / "diversity.json").exists()

    # a folder with released weights only (no last.pth) gives them; an empty one is a one-line error
    weights = tmp_path / "released"
    gaheads.save_weights(gaheads.load(ck), weights / "model.safetensors")
    assert resolve_checkpoint(weights) == weights / "model.safetensors"
    torch.testing.assert_close(gaheads.load(weights)(x), gaheads.load(ck)(x), rtol=0, atol=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(cli_argvs(empty, data, tmp_path)["predict"]) == 2
    assert one_line(capsys) == (f"gaheads predict: no checkpoint in run folder {empty} (looked for last.pth and "
                                "model.safetensors)")


@pytest.mark.parametrize("command", ["validate", "predict"])
def test_closed_pipe_exits_quietly(command, tmp_path, monkeypatch, capsys):
    """``gaheads validate --json | head``: the reader has gone; no BrokenPipeError traceback, status 141.

    stdout is a real pipe whose read end is closed, so the write fails with EPIPE as in a shell.
    """
    import os

    from data_fixtures import make_imagefolder

    from gaheads.cli import main

    data = make_imagefolder(tmp_path / "imgs", classes=("cat", "dog"), per_class=1)
    ck = multi_head_checkpoint(tmp_path / "run")
    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = os.fdopen(write_end, "w")
    monkeypatch.setattr("sys.stdout", pipe)
    try:
        assert main(cli_argvs(ck, data, tmp_path)[command]) == 141
    finally:
        monkeypatch.undo()
        pipe.close()
    assert capsys.readouterr().err == ""


def test_plain_data_converts_what_a_safe_load_reads_and_names_what_it_cannot(tmp_path):
    import argparse

    import numpy as np

    from gaheads.checkpoint import plain_data

    data = plain_data({"a": np.arange(3, dtype=np.uint32), "b": np.float32(0.5), "c": tmp_path,
                       "d": argparse.Namespace(x=(1, 2)), np.int64(7): [np.bool_(True)]})
    assert data["a"].dtype == torch.uint32 and data["a"].tolist() == [0, 1, 2]
    assert (data["b"], data["c"], data["d"], data[7]) == (0.5, str(tmp_path), {"x": (1, 2)}, [True])
    assert type(data["b"]) is float and type(list(data)[-1]) is int
    torch.save(data, tmp_path / "p.pth")
    assert torch.load(tmp_path / "p.pth", weights_only=True)["d"] == {"x": (1, 2)}
    with pytest.raises(TypeError) as e:
        plain_data({"opt": {"state": [object()]}})
    assert str(e.value) == ("checkpoint['opt']['state'][0] is a builtins.object, which a safe load cannot read; "
                            "store it as tensors or plain containers")
