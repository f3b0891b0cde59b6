"""predict: any image mode is read as RGB, folders are batched, an unreadable file is named and skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import make_checkpoint
from PIL import Image

import gaheads
from gaheads.cli import predict as predict_cli
from gaheads.inference import ImageError, load_image, predict, to_rgb

NAMES = [f"digit{i}" for i in range(10)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pth", class_names=NAMES)
    return path


def write_images(folder, n: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_folder_with_corrupt_file_predicts_the_others_and_names_it(tmp_path, checkpoint, capsys):
    good = write_images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    model = gaheads.load(checkpoint)
    results = predict(model, [tmp_path / "imgs"], topk=3, batch_size=2)
    by_source = {r.source: r for r in results}
    assert sorted(by_source) == sorted(good + [str(bad)])
    assert "broken.jpg" in by_source[str(bad)].error
    for p in good:
        r = by_source[p]
        assert r.ok and len(r.classes) == 3 and all(c in NAMES for c in r.classes)
        assert r.probs == sorted(r.probs, reverse=True) and 0 < sum(r.probs) <= 1 + 1e-6
        assert len(r.branch_top1) == 4
    # same answers one image at a time as in batches of 2: batching does not change a prediction
    single = predict(model, good, topk=3, batch_size=1)
    assert [r.indices for r in single] == [by_source[p].indices for p in good]
    assert np.allclose([r.probs for r in single], [by_source[p].probs for p in good], atol=1e-6)

    rc = predict_cli.main(["--checkpoint", str(checkpoint), str(tmp_path / "imgs"), "--json", "--topk", "2"])
    out, err = capsys.readouterr()
    assert rc == 0  # at least one image was predicted; the skipped one is named on stderr
    assert "broken.jpg" in err and err.count("\n") == 1
    rows = json.loads(out)
    assert sum("topk" in r for r in rows) == 3 and sum("error" in r for r in rows) == 1
    assert all(len(r["topk"]) == 2 for r in rows if "topk" in r)


def test_common_image_modes_are_converted_and_predicted(tmp_path, checkpoint):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((32, 32), 255, np.uint8)])
    rgba[:4, :4, 3] = 0  # a transparent corner composited onto white
    paths = {
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "gray.png": Image.fromarray(rgb[..., 0], "L"),
        "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),  # mode I;16
        "cmyk.jpg": Image.fromarray(rgb, "RGB").convert("CMYK"),
        "pal.gif": Image.fromarray(rgb, "RGB").convert("P"),
    }
    for name, img in paths.items():
        img.save(tmp_path / name)
    for name in paths:
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (32, 32), name
    deep = np.asarray(load_image(tmp_path / "deep.png"))
    assert np.array_equal(deep[..., 0], rgb[..., 0])  # 16-bit rescaled by 1/257, not clipped at 255
    corner = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (corner[:4, :4] == 255).all() and np.array_equal(corner[4:, 4:], rgb[4:, 4:])

    model = gaheads.load(checkpoint)
    results = gaheads.predict(model, [tmp_path / n for n in sorted(paths)], topk=1)
    assert [r.ok for r in results] == [True] * len(paths)
    assert all(r.classes[0] in NAMES for r in results)


def test_unreadable_named_file_and_bad_arguments(tmp_path, checkpoint, capsys):
    with pytest.raises(ImageError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")
    assert predict_cli.main(["--checkpoint", str(tmp_path / "missing.pth"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gaheads predict: ") and "missing.pth" in err and err.count("\n") == 1
    assert predict_cli.main(["--checkpoint", str(checkpoint), str(tmp_path / "nothing.png")]) == 2
    assert "nothing.png" in capsys.readouterr().err


def test_tensor_inputs_match_the_model(checkpoint):
    model = gaheads.load(checkpoint)
    x = torch.randn(2, 3, 32, 32)
    results = predict(model, x, topk=10)
    probs = model(x).softmax(-1)
    for r, p in zip(results, probs):
        assert r.indices == p.argsort(descending=True).tolist()
        assert np.allclose(r.probs, p.sort(descending=True).values.tolist(), atol=1e-6)
