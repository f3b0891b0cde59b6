"""Export: ONNX with a dynamic batch axis and TorchScript match PyTorch; safetensors + JSON reloads exactly."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import timm
import torch
from model_fixtures import make_checkpoint

import gaheads
from gaheads.cli import export as export_cli
from gaheads.export import check_onnx, export_onnx


def enlarge_outputs(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh heads output logits near 0 (LayerScale 1e-4, classifier std 0.02), which would make a 1e-4
    tolerance meaningless; set LayerScale to 1 and classifier weights to std 1 so logits are O(1)."""
    with torch.no_grad():
        for name, p in model.head.named_parameters():
            if name.endswith(("gamma1", "gamma2")):
                p.fill_(1.0)
            elif name == "classifier.weight":
                p.normal_(0, 1.0)
    return model.eval()


def onnx_vs_torch(path, model, branches: bool) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == (["logits", "branch_logits"] if branches else ["logits"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic: the batch axis is dynamic
    for bs in (1, 3):
        x = torch.randn(bs, *model.pretrained_cfg["input_size"])
        got = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model(x, return_branches=True)
        assert ref.std() > 0.5  # logits large enough for the tolerance to mean something
        assert got[0].shape == (bs, model.num_classes)
        assert torch.allclose(torch.from_numpy(got[0]), ref.mean(1), atol=1e-4, rtol=0)
        if branches:
            assert got[1].shape == (bs, model.num_branches, model.num_classes)
            assert torch.allclose(torch.from_numpy(got[1]), ref, atol=1e-4, rtol=0)
    # 1e-4 holds under onnx 1.17 / onnxruntime 1.20.1 / torch 2.6 and onnx 1.23 / onnxruntime 1.32 / torch 2.14
    assert check_onnx(path, model) < 1e-4


def test_onnx_seqattn_cct(tmp_path):
    model = enlarge_outputs(timm.create_model("seqattn4_cct_2_3x2_32", num_classes=10))
    onnx_vs_torch(export_onnx(model, tmp_path / "cct.onnx"), model, branches=False)


def test_onnx_ga_head_on_timm_backbone_with_branches(tmp_path):
    model = enlarge_outputs(gaheads.create_model("ga2@resnet18", num_classes=5, img_size=64))
    onnx_vs_torch(export_onnx(model, tmp_path / "ga.onnx", branches=True), model, branches=True)


def test_cli_torchscript_and_safetensors_round_trip(tmp_path, capsys):
    ckpt, model = make_checkpoint(tmp_path / "last.pth", name="ga2_cct_2_3x2_32", class_names=list("abcdefghij"))
    assert export_cli.main(["--checkpoint", str(ckpt), "--format", "torchscript", "--output",
                            str(tmp_path / "m.pt"), "--branches"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in out and float(out.split(":")[-1]) < 1e-4
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, branches = scripted(x)
        assert torch.allclose(branches, model(x, return_branches=True), atol=1e-5)

    assert export_cli.main(["--checkpoint", str(ckpt), "--format", "safetensors", "--output",
                            str(tmp_path / "w.safetensors")]) == 0
    reloaded = gaheads.load(tmp_path / "w.safetensors")
    assert reloaded.class_names == list("abcdefghij") and reloaded.data_config["input_size"] == [3, 32, 32]
    with torch.no_grad():
        assert torch.equal(reloaded(x, return_branches=True), model(x, return_branches=True))


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert export_cli.main(["--checkpoint", str(tmp_path / "junk.pth"), "--format", "onnx", "--output",
                            str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gaheads export: ") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        export_cli.main(["--checkpoint", "x", "--format", "tflite", "--output", "y"])


def test_cli_hf_folder_loads_with_timm_local_dir(tmp_path, capsys):
    """A trained checkpoint exported as --format hf: timm.create_model("local-dir:…", pretrained=True)
    gives its logits."""
    import json

    from gaheads.export import timm_supports_local_dir

    ckpt, model = make_checkpoint(tmp_path / "last.pth", name="ga2_cct_2_3x2_32", class_names=list("abcdefghij"))
    if not timm_supports_local_dir():  # timm 1.0.16: refused with one line, nothing written
        assert export_cli.main(["--checkpoint", str(ckpt), "--format", "hf", "--output", str(tmp_path / "hf")]) == 2
        assert "--format hf needs a timm that reads local-dir: folders safely" in capsys.readouterr().err
        assert not (tmp_path / "hf").exists()
        return
    assert export_cli.main(["--checkpoint", str(ckpt), "--format", "hf", "--output", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    hf = tmp_path / "hf"
    assert out.splitlines()[:2] == [f"wrote {hf / 'config.json'}", f"wrote {hf / 'model.safetensors'}"]
    assert float(out.split(":")[-1]) == 0.0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architecture"] == "ga2_cct_2_3x2_32" and cfg["label_names"] == list("abcdefghij")
    assert cfg["pretrained_cfg"]["classifier"] == "head.classifier" and cfg["num_classes"] == 10
    loaded = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x, return_branches=True), model(x, return_branches=True))
