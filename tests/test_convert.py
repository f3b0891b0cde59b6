"""Research-release checkpoints -> gaheads: layouts, round trips with identical logits, one-line refusals."""

import pytest
import timm
import torch

import gaheads
from gaheads.cli.convert import main as convert_main
from gaheads.convert import ConvertError, convert_state_dict, read_release_checkpoint, to_release_state_dict

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def randomised(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A model whose every parameter and BN statistic is random (so a misplaced tensor changes the logits)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif n.endswith("running_mean"):
                b.normal_()
    return model.eval()


def release_params(state: dict) -> int:
    return sum(v.numel() for k, v in state.items() if not k.endswith(BUFFERS))


# the releases' own models at 100 classes (counted on the research code): each GA / SG / SeqAttention / AT
# CCT there keeps an unused Linear(256 -> 100), 25,700 parameters, which the release layout carries
# (parameters and state-dict entries: 83 for the encoder and its unused classifier, then per branch 31 for GA,
# 19 for SeqAttention, 16 for SG, 17 for AT, and AT's 2 shared query tensors)
@pytest.mark.parametrize("name,count,n_keys", [
    ("cct_7_3x1_32", 3_783_269, 85),
    ("ga8_cct_7_3x1_32", 7_191_172, 83 + 8 * 31),
    ("seqattn8_cct_7_3x1_32", 6_636_684, 83 + 8 * 19),
    ("sg8_cct_7_3x1_32", 4_545_156, 83 + 8 * 16),
    ("at8_cct_7_3x1_32", 6_667_524, 85 + 8 * 17),
])
def test_release_layout_of_the_cct_family(name, count, n_keys):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=100)
    state = to_release_state_dict(model, name)
    assert release_params(state) == count
    assert len(state) == n_keys


def test_release_layout_key_names_and_shapes():
    with torch.device("meta"):
        model = timm.create_model("ga8_cct_7_3x1_32", num_classes=100)
    state = to_release_state_dict(model, "ga8_cct_7_3x1_32")
    head = "classifier.gramian_attn_head"
    assert state[f"{head}.gram_contraction.7.1.weight"].shape == (64, 32, 1, 1)
    assert state[f"{head}.gram_embedding.0.0.weight"].shape == (256, 260, 1, 1)
    assert state[f"{head}.gram_attention.3.attn.k.weight"].shape == (64, 256)
    assert state[f"{head}.gram_attention.3.mlp.fc2.weight"].shape == (256, 512, 1, 1)
    assert state["classifier.blocks.6.mlp.linear1.weight"].shape == (512, 256)
    assert state["tokenizer.conv_layers.0.0.weight"].shape == (256, 3, 3, 3)
    assert state["classifier.fc.weight"].shape == (100, 256)  # the unused Linear the release keeps


def test_release_layout_of_ga_convnext_tiny():
    with torch.device("meta"):
        model = timm.create_model("ga_convnext_tiny_688")
    state = to_release_state_dict(model, "ga_convnext_tiny_688")
    assert release_params(state) == 47_821_324 and len(state) == 407
    assert state["stages.4.downsample.0.weight"].shape == (688, 2128, 1, 1)  # the fifth stage's shortcut
    assert state["gram_layer.4.blocks.0.conv_dw.weight"].shape == (192, 1, 7, 7)
    assert state["ga.2.mlp.fc1.weight"].shape == (2752, 172, 1, 1)


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "ga2_cct_2_3x2_32", "seqattn2_cct_2_3x2_32", "sg2_cct_2_3x2_32",
                                  "at2_cct_2_3x2_32"])
def test_round_trip_gives_identical_logits(name):
    kwargs = {"encoder_attention": "identity"} if name.startswith("sg") else {}
    model = randomised(name, num_classes=7, **kwargs)
    converted = convert_state_dict(to_release_state_dict(model, name), name)
    assert converted.num_classes == 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_sg_converts_to_the_released_attention_free_encoder():
    model = convert_state_dict(to_release_state_dict(randomised("sg2_cct_2_3x2_32"), "sg2_cct_2_3x2_32"),
                               "sg2_cct_2_3x2_32")
    assert type(model.backbone.blocks[0].attn).__name__ == "PassThroughAttention"
    assert model.gaheads_config["kwargs"]["encoder_attention"] == "identity"


def test_ga_convnext_round_trip():
    # the tiny layout at a small width (the table does not depend on widths or depths)
    small = dict(depths=(1, 1, 3, 1), dims=(16, 32, 48, 64), attn_dim=16, gram_dim=16)
    model = randomised("ga_convnext_tiny_688", num_classes=10, **small)
    converted = convert_state_dict(to_release_state_dict(model, "ga_convnext_tiny_688"), "ga_convnext_tiny_688",
                                   **small)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


@pytest.mark.parametrize("layout", ["timm", "ema", "bare", "module"])
def test_cli_reads_every_saved_layout(tmp_path, layout, capsys):
    name = "ga2_cct_2_3x2_32"
    model, ema = randomised(name, 1, num_classes=5), randomised(name, 2, num_classes=5)
    state, ema_state = to_release_state_dict(model, name), to_release_state_dict(ema, name)
    if layout == "bare":
        obj = state
    elif layout == "module":  # a DDP-wrapped model's keys
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    else:  # timm's saver: weights, EMA, optimizer state and the arguments
        obj = {"epoch": 3, "arch": name, "state_dict": state, "state_dict_ema": ema_state,
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "version": 2}
    torch.save(obj, tmp_path / "release.pth.tar")
    argv = [str(tmp_path / "release.pth.tar"), "--model", name, "--output", str(tmp_path / "out.safetensors")]
    assert convert_main(argv + (["--ema"] if layout == "ema" else [])) == 0
    assert "ga2_cct_2_3x2_32: " in capsys.readouterr().out
    loaded = gaheads.load(tmp_path / "out.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), (ema if layout == "ema" else model)(x))


def test_wrong_branch_count_is_refused_with_the_name_to_use():
    state = to_release_state_dict(randomised("ga8_cct_2_3x2_32"), "ga8_cct_2_3x2_32")
    with pytest.raises(ConvertError) as e:
        convert_state_dict(state, "ga1_cct_2_3x2_32")
    assert str(e.value) == ("the checkpoint has 8 branches, ga1_cct_2_3x2_32 has 1: "
                            "convert with --model ga8_cct_2_3x2_32")


def test_misfits_are_refused_in_one_line(tmp_path, capsys):
    state = to_release_state_dict(randomised("ga2_cct_2_3x2_32"), "ga2_cct_2_3x2_32")
    with pytest.raises(ConvertError) as e:
        convert_state_dict(state, "seqattn2_cct_2_3x2_32")
    assert str(e.value) == ("the checkpoint has no seqattn head (no key like "
                            "'classifier.seq_attn_head.final_fc.0.weight'); is it another model's?")
    extra = {**state, "classifier.gramian_attn_head.extra.0.weight": torch.zeros(1)}
    with pytest.raises(ConvertError) as e:
        convert_state_dict(extra, "ga2_cct_2_3x2_32")
    assert str(e.value) == ("unexpected key 'classifier.gramian_attn_head.extra.0.weight' for ga2_cct_2_3x2_32 "
                            "(is this a ga checkpoint?)")
    bad = dict(state)
    bad["classifier.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConvertError) as e:
        convert_state_dict(bad, "ga2_cct_2_3x2_32")
    assert str(e.value) == ("'classifier.blocks.0.attn.qkv.weight' of shape (3, 3) does not fit "
                            "backbone.blocks.0.attn.qkv.weight of shape (384, 128) in ga2_cct_2_3x2_32")
    del bad["classifier.blocks.0.attn.qkv.weight"]
    with pytest.raises(ConvertError, match=r"^the checkpoint lacks weights for 1 tensor\(s\) of ga2_cct_2_3x2_32, "
                                           r"e\.g\. backbone\.blocks\.0\.attn\.qkv\.weight$"):
        convert_state_dict(bad, "ga2_cct_2_3x2_32")
    deeper = to_release_state_dict(randomised("ga2_cct_4_3x2_32"), "ga2_cct_4_3x2_32")
    with pytest.raises(ConvertError, match=r"has no counterpart in ga2_cct_2_3x2_32"):
        convert_state_dict(deeper, "ga2_cct_2_3x2_32")
    # through the command: one line on stderr, exit status 1, nothing written
    torch.save({"state_dict": state}, tmp_path / "ga.pth")
    assert convert_main([str(tmp_path / "ga.pth"), "--model", "resnet50", "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err == ("gaheads convert: resnet50: the releases define no such model (convertible: cct_*, "
                   "ga/sg/seqattn/at<K>_cct_*, ga_convnext_*)\n")
    assert not list(tmp_path.glob("o*"))


class NotATensor:
    pass


def test_pickled_objects_are_not_loaded(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ConvertError, match=r"^.*evil\.pth: not a loadable weights-only checkpoint \(UnpicklingError"):
        read_release_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(ConvertError, match=r"has no state_dict_ema"):
        torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "plain.pth")
        read_release_checkpoint(tmp_path / "plain.pth", use_ema=True)
