"""One preprocessing path: every PIL mode to RGB by fixed rules, and the same input tensor in validation and predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import make_checkpoint
from PIL import Image

import gaheads
from gaheads.data import create_dataset, create_transform
from gaheads.inference import input_tensors, predict
from gaheads.preprocess import (
    BACKGROUND,
    ImageError,
    eval_transform,
    model_input,
    open_image,
    resolve_data_config,
    to_rgb,
)

ORIENTATION = 0x0112


def solid(mode: str, value, size=(4, 4)) -> Image.Image:
    return Image.new(mode, size, value)


def palette_with_transparency() -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (the transparent one), index 1 blue
    img.putpixel((3, 3), 1)
    img.info["transparency"] = 0
    return img


def exif_rotated(orientation: int = 6) -> Image.Image:
    """16 wide x 8 high, left half red, right half blue, tagged 'rotate 90 clockwise to show'."""
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8, 0] = 255
    arr[:, 8:, 2] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    img.info["exif"] = exif.tobytes()
    return img


# (name, image, expected RGB of pixel (0, 0)); the background of transparency is white
MODES = [
    ("RGBA transparent red", solid("RGBA", (255, 0, 0, 0)), (255, 255, 255)),
    ("RGBA opaque red", solid("RGBA", (255, 0, 0, 255)), (255, 0, 0)),
    ("RGBA half-transparent", solid("RGBA", (200, 0, 0, 128)), (227, 127, 127)),
    ("LA transparent", solid("LA", (100, 0)), (255, 255, 255)),
    ("LA opaque", solid("LA", (100, 255)), (100, 100, 100)),
    ("P transparent index", palette_with_transparency(), (255, 255, 255)),
    ("I 200", Image.fromarray(np.full((4, 4), 200, np.int32), "I"), (200, 200, 200)),
    ("I 16-bit range", Image.fromarray(np.array([[51400, 65535]], np.int32), "I"), (200, 200, 200)),
    ("I negative", Image.fromarray(np.full((4, 4), -7, np.int32), "I"), (0, 0, 0)),
    ("I;16 200", Image.fromarray(np.full((4, 4), 200, np.uint16)), (1, 1, 1)),
    ("I;16 51400", Image.fromarray(np.full((4, 4), 51400, np.uint16)), (200, 200, 200)),
    ("F 0.5", Image.fromarray(np.full((4, 4), 0.5, np.float32), "F"), (128, 128, 128)),
    ("F 0..255", Image.fromarray(np.array([[77.0, 300.0]], np.float32), "F"), (77, 77, 77)),
    ("F nan", Image.fromarray(np.array([[np.nan, 0.25]], np.float32), "F"), (0, 0, 0)),
    ("CMYK red", solid("CMYK", (0, 255, 255, 0)), (255, 0, 0)),
    ("1 white", solid("1", 1), (255, 255, 255)),
    ("1 black", solid("1", 0), (0, 0, 0)),
    ("L", solid("L", 77), (77, 77, 77)),
    ("RGB", solid("RGB", (1, 2, 3)), (1, 2, 3)),
]


@pytest.mark.parametrize("name,img,expected", MODES, ids=[m[0] for m in MODES])
def test_every_mode_gives_8bit_rgb_by_the_documented_rule(name, img, expected):
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    assert tuple(int(v) for v in np.asarray(out)[0, 0]) == expected


def test_transparency_background_is_white_and_documented():
    assert BACKGROUND == (255, 255, 255)
    p = np.asarray(to_rgb(palette_with_transparency()))
    assert tuple(p[3, 3]) == (0, 0, 255)  # the opaque palette entry keeps its colour
    # the second pixel of "I 16-bit range" (65535) is 255, of "F 0..255" (300) clips to 255
    assert np.asarray(to_rgb(MODES[7][1]))[0, 1].tolist() == [255, 255, 255]
    assert np.asarray(to_rgb(MODES[12][1]))[0, 1].tolist() == [255, 255, 255]
    assert np.asarray(to_rgb(MODES[13][1]))[0, 1].tolist() == [64, 64, 64]  # 0.25 of 0..1 floats


@pytest.mark.parametrize("orientation,size,corner", [(1, (16, 8), (255, 0, 0)), (3, (16, 8), (0, 0, 255)),
                                                     (6, (8, 16), (255, 0, 0)), (8, (8, 16), (0, 0, 255))])
def test_exif_orientation_is_applied(orientation, size, corner):
    out = to_rgb(exif_rotated(orientation))
    assert out.size == size and tuple(np.asarray(out)[0, 0]) == corner
    assert to_rgb(out) is out  # applying it twice changes nothing (the tag is gone after turning)


def odd_images(folder) -> dict[str, str]:
    """Image files whose modes survive saving: name -> path (class folders ``odd`` and ``plain``)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((20, 24), 255, np.uint8)])
    rgba[:6, :6] = (255, 0, 0, 0)  # transparent red corner
    la = np.dstack([rgb[..., 0], rng.integers(0, 256, (20, 24), dtype=np.uint8)])
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    images = {
        "rgba.png": (Image.fromarray(rgba, "RGBA"), {}),
        "la.png": (Image.fromarray(la, "LA"), {}),
        "pal.png": (pal, {"transparency": 0}),
        "int32.tif": (Image.fromarray(np.full((20, 24), 200, np.int32), "I"), {}),
        "deep.png": (Image.fromarray(rgb[..., 1].astype(np.uint16) * 257), {}),
        "float.tif": (Image.fromarray(rgb[..., 2].astype(np.float32) / 255, "F"), {}),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), {"quality": 95}),
        "bilevel.png": (Image.fromarray(rgb[..., 0] > 128), {}),
        "gray.png": (Image.fromarray(rgb[..., 0], "L"), {}),
        "rotated.jpg": (exif_rotated(6), {"quality": 95}),
    }
    paths = {}
    for name, (img, kw) in images.items():
        path = folder / "val" / "odd" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if "exif" in img.info:
            kw = {**kw, "exif": img.info["exif"]}
        img.save(path, **kw)
        paths[name] = str(path)
    plain = folder / "val" / "plain" / "plain.png"
    plain.parent.mkdir(parents=True)
    Image.fromarray(rgb).save(plain)
    return paths


def test_files_keep_their_odd_modes(tmp_path):
    paths = odd_images(tmp_path)
    modes = {name: Image.open(p).mode for name, p in paths.items()}
    # Pillow 10.1 opens a 16-bit grayscale PNG as "I", Pillow 13 as "I;16"; open_image gives both the same RGB
    assert modes.pop("deep.png") in ("I", "I;16")
    assert modes == {"rgba.png": "RGBA", "la.png": "LA", "pal.png": "P", "int32.tif": "I",
                     "float.tif": "F", "cmyk.jpg": "CMYK", "bilevel.png": "1", "gray.png": "L", "rotated.jpg": "RGB"}
    rotated = open_image(paths["rotated.jpg"])
    assert rotated.size == (8, 16)  # EXIF applied on reading
    assert np.asarray(open_image(paths["int32.tif"])).max() == 200  # 32-bit value 200 stays 200
    assert np.asarray(open_image(paths["rgba.png"]))[:6, :6].tolist() == [[[255] * 3] * 6] * 6
    with pytest.raises(ImageError, match=r"nothing\.png: cannot read image \(FileNotFoundError: "):
        open_image(tmp_path / "nothing.png")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pth", class_names=["odd", "plain"])
    return gaheads.load(path)


def test_validation_and_predict_give_bit_identical_inputs(tmp_path, model):
    paths = odd_images(tmp_path)
    cfg = resolve_data_config(model)
    # validate's dataset (gaheads validate builds exactly this), and training's val transform
    val = create_dataset("imagefolder", tmp_path, "val", transform=eval_transform(cfg))
    also = create_dataset("imagefolder", tmp_path, "val", transform=create_transform(model.data_config, False))
    order = [p for p, _ in val.samples]
    from_val = [val[i][0] for i in range(len(val))]
    from_predict = {source: x for source, x, error in input_tensors(model, order) if error is None}
    assert sorted(from_predict) == sorted(order) and len(order) == len(paths) + 1
    for i, path in enumerate(order):
        assert torch.equal(from_val[i], from_predict[path]), path
        assert torch.equal(from_val[i], also[i][0]), path
    # PIL images handed to predict in memory go the same way
    for i, path in enumerate(order):
        with Image.open(path) as img:
            img.load()
            assert torch.equal(model_input(img, cfg), from_val[i]), path
    # and predict's answers are those of the model on validation's tensors
    results = predict(model, order, topk=2, batch_size=len(order))
    with torch.no_grad():
        probs = model(torch.stack(from_val), return_branches=True).float().mean(dim=1).softmax(dim=-1)
    top = probs.topk(2, dim=-1)
    assert [r.indices for r in results] == top.indices.tolist()
    assert [r.probs for r in results] == top.values.tolist()


def test_one_data_config_resolver(model):
    fresh = gaheads.create_model("seqattn4_cct_2_3x2_32", num_classes=2)
    expected = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5071, 0.4867, 0.4408],
                "std": [0.2675, 0.2565, 0.2761], "crop_pct": 1.0, "crop_mode": "center"}
    assert resolve_data_config(fresh) == expected
    assert resolve_data_config(model) == expected  # a loaded model: its stored config
    model_cfg = dict(model.data_config)
    try:
        model.data_config = {**expected, "input_size": [3, 40, 40], "crop_pct": 0.9}
        assert resolve_data_config(model)["input_size"] == [3, 40, 40]
        assert resolve_data_config(model, {"img_size": 48, "mean": (0.5, 0.5, 0.5)}) == {
            **expected, "input_size": [3, 48, 48], "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5]}
    finally:
        model.data_config = model_cfg
    with pytest.raises(ValueError, match=r"^unknown data config override\(s\) size "):
        resolve_data_config(fresh, {"size": 3})
