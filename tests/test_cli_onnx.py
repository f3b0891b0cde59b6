"""ONNX exports describe themselves (metadata_props + JSON sidecar), and the README's onnxruntime
snippet, fed only by them, gives `gaheads predict`'s answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from model_fixtures import make_checkpoint
from PIL import Image

from gaheads.checkpoint import load
from gaheads.export import export_onnx, onnx_sidecar
from gaheads.inference import predict

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = [f"digit_{i}" for i in range(10)]


def readme_snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- onnx-snippet -->\n```python\n(.*?)```", text, re.S)
    assert match, "README has no onnx-snippet block"
    return match.group(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    ckpt, _ = make_checkpoint(folder / "last.pth", class_names=CLASSES, seed=3)
    model = load(ckpt)
    return folder, model, export_onnx(model, folder / "demo.onnx")


def test_metadata_props_and_sidecar_hold_the_preprocessing_and_classes(exported):
    folder, model, path = exported
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta == json.loads(onnx_sidecar(path).read_text())
    assert onnx_sidecar(path) == folder / "demo.onnx.json"
    assert meta["model"] == "seqattn4_cct_2_3x2_32" and meta["class_names"] == CLASSES
    assert meta["input_size"] == [3, 32, 32] and meta["input"] == "images" and meta["outputs"] == ["logits"]
    cfg = model.data_config
    assert (meta["mean"], meta["std"], meta["crop_pct"], meta["interpolation"]) == (
        list(cfg["mean"]), list(cfg["std"]), cfg["crop_pct"], cfg["interpolation"])


def test_readme_snippet_gives_predicts_answer(exported, tmp_path, monkeypatch, capsys):
    folder, model, _ = exported
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) <= 10
    rng = np.random.default_rng(7)
    for w, h in [(45, 38), (28, 28), (32, 60)]:  # wide, small square, tall: resize + crop paths
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "one.png")
        expected = predict(model, str(folder / "one.png"), topk=10)[0]
        monkeypatch.chdir(folder)
        scope: dict = {}
        exec(compile(snippet, "README onnx snippet", "exec"), scope)
        printed = capsys.readouterr().out.strip()
        assert printed == expected.classes[0], (w, h)
        probs = torch.from_numpy(scope["logits"][0]).softmax(-1)
        ours = torch.tensor([expected.probs[expected.indices.index(c)] for c in range(10)])
        assert torch.allclose(probs, ours, atol=1e-4), (w, h)
