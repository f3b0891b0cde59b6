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
