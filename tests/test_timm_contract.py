"""gaheads' registered models against timm's model contract (what timm's own tests/test_models.py checks).

The config checks run on every registered model on the meta device (shapes only, no weights);
the forward / backward / features / intermediates / FX / TorchScript checks run on small
configurations of each model family. The rules follow timm's: token-output models (CCT, GA-ViT)
get its "non-standard" config checks (no spatial pool_size, no global_pool=''), the others the
standard ones. ``benchmarks/timm_model_tests.sh`` runs timm's own test file on these models;
tests/test_scripting.py checks TorchScript, FX and torch.export on every family and head.
"""

from __future__ import annotations

import fnmatch
import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters
from zoo_checks import create_on_meta

import gaheads
from gaheads.models import list_models

TOKEN_MODELS = ("*cct_*", "ga_vit_*")
torch.manual_seed(0)


def is_token_model(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in TOKEN_MODELS)


def spatial_axes(fmt: str) -> tuple[int, int]:
    return (1, 2) if fmt == "NHWC" else (2, 3)


def channel_axis(fmt: str) -> int:
    return 3 if fmt == "NHWC" else 1


def check_api_contract(model: torch.nn.Module, name: str) -> None:
    with pytest.raises(TypeError):
        timm.create_model(name, device="meta", not_a_model_arg=1)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    names = [n for n, _ in model.named_parameters()]
    for pattern in getattr(model, "no_weight_decay", set)():
        if not any(fnmatch.fnmatch(n, pattern) for n in names):
            obj = model
            for attr in pattern.split("."):
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            assert obj is None, pattern


def check_reset_keeps_device_dtype(model: torch.nn.Module) -> None:
    model.to(device="meta", dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    params = list(model.get_classifier().parameters())
    assert params and all(p.device.type == "meta" and p.dtype == torch.float64 for p in params)
    assert all(m.training == model.training for m in model.modules())


# the full config check runs on one model of each family; the static part on every registered model
# (CSWin's meta-device forward is slow; the real timm harness covers its config test)
CFG_SUBSET = ("ga2_cct_2_3x2_32", "cct_2_3x2_32", "ga_convnext_tiny_688", "ga_resnet50", "ga_vit_small")


@pytest.mark.parametrize("name", list_models())
def test_static_cfg(name: str) -> None:
    """Every registered model: timm's config fields name real parameters; meta-device construction."""
    model = create_on_meta(name, via_kwarg=True, dtype=torch.float32)
    cfg = model.default_cfg
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    assert model.in_chans == cfg["input_size"][0] == 3
    assert model.head_hidden_size == model.num_features > 0
    assert is_token_model(name) or len(cfg["pool_size"]) == 2
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 2


@pytest.mark.parametrize("name", CFG_SUBSET)
def test_default_cfg(name: str) -> None:
    """timm's test_model_default_cfgs (standard models) / _non_std (token models), on meta tensors."""
    with torch.device("meta"):
        model = create_on_meta(name, via_kwarg=True, dtype=torch.float32).eval()
    check_api_contract(model, name)
    cfg = model.default_cfg
    assert model.num_classes > 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == cfg["input_size"][0]
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state
    assert cfg["first_conv"] + ".weight" in state
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    x = torch.randn(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    fmt = getattr(model, "output_fmt", "NCHW")
    assert pre.shape == (1, model.head_hidden_size)
    if is_token_model(name):
        assert feats.ndim == 3 and feats.shape[-1] == model.num_features
    else:
        h, w = spatial_axes(fmt)
        assert (feats.shape[h], feats.shape[w]) == tuple(cfg["pool_size"])
        assert feats.shape[channel_axis(fmt)] == model.num_features
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.to(torch.float32)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    if not is_token_model(name):
        model.reset_classifier(0, "")
        out = model(x)
        h, w = spatial_axes(fmt)
        assert out.ndim == 4 and (out.shape[h], out.shape[w]) == tuple(cfg["pool_size"])
        unpooled = timm.create_model(name, num_classes=0, global_pool="", device="meta", dtype=torch.float32)
        assert unpooled(x).shape == out.shape
    headless = timm.create_model(name, num_classes=0, device="meta", dtype=torch.float32).eval()
    assert headless(x).shape == pre.shape
    check_reset_keeps_device_dtype(headless)
    built = timm.create_model(name, device="meta", dtype=torch.float32)
    assert {t.device.type for t in [*built.parameters(), *built.buffers()]} == {"meta"}
    built.requires_grad_(False)
    built.reset_classifier(0)
    assert not any(p.requires_grad for p in built.parameters())


# small configurations of each family (the registered names with fewer/narrower layers)
SMALL = {
    "ga2_cct_2_3x2_32": {}, "seqattn2_cct_2_3x2_32": {}, "sg2_cct_2_3x2_32": {}, "at2_cct_2_3x2_32": {},
    "cct_2_3x2_32": {},
    "ga_convnext_tiny_688": dict(depths=(1, 1, 3, 1), dims=(16, 32, 64, 96), attn_dim=32, gram_dim=16,
                                 num_intermediates=1),
    "ga_cswin_tiny_224": dict(depths=(1, 1, 2, 1), num_intermediates=1, fifth_dim=64, gram_dim=64, attn_dim=32),
}
SMALL_SIZE = {"ga_convnext_tiny_688": 64, "ga_cswin_tiny_224": 112}


def small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL[name], **kwargs)


def small_input(name: str, batch: int = 1) -> torch.Tensor:
    side = SMALL_SIZE.get(name, 32)
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_backward_checkpointing(name: str) -> None:
    """timm's test_model_forward / _backward: every parameter gets a gradient; checkpointing keeps the output."""
    model = small(name, num_classes=42).eval()
    x = small_input(name, 2)
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)
    model.train()
    model(x).mean().backward()
    assert out.shape == (2, 42)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", ["ga2_cct_2_3x2_32", "ga_convnext_tiny_688", "ga_cswin_tiny_224"])
def test_forward_intermediates_and_features_only(name: str) -> None:
    """timm's test_model_forward_intermediates(_features): levels match feature_info; the final output
    is forward_features."""
    model = small(name).eval()
    x = small_input(name)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        feats = small(name, features_only=True).eval()(x)
    assert len(levels) == len(feats) == len(info.channels()) >= 3
    for c, r, o, f in zip(info.channels(), info.reduction(), levels, feats):
        assert o.shape == f.shape and o.shape[1] == c
        assert o.shape[-1] <= math.ceil(x.shape[-1] / r) + 1 and o.shape[-1] > x.shape[-1] / (2 * r)


@pytest.mark.parametrize("name", ["ga2_cct_2_3x2_32", "seqattn2_cct_2_3x2_32", "ga_convnext_tiny_688"])
def test_fx_forward_backward(name: str) -> None:
    """timm's test_model_forward_fx / _backward_fx: a torch.fx trace with timm's leaf modules and functions."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = small(name).eval()
    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
              param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    fx = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                  tracer_kwargs=kw)
    x = small_input(name, 2)
    with torch.no_grad():
        torch.testing.assert_close(tuple(fx(x).values())[0], model(x), rtol=1e-4, atol=1e-5)
    fx.train()
    tuple(fx(x).values())[0].mean().backward()
    assert all(p.grad is not None for p in fx.parameters())


def test_layer_decay_uses_group_matcher() -> None:
    """create_optimizer_v2(layer_decay=0.75) gets one lr scale per layer group from group_matcher."""
    from timm.optim import create_optimizer_v2

    for name, n_layers in (("ga2_cct_2_3x2_32", 4), ("ga_convnext_tiny_688", 8)):
        model = small(name)
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
        scales = sorted({round(g["lr_scale"], 6) for g in opt.param_groups})
        assert len(scales) == n_layers
        assert scales[-1] == 1.0 and scales[0] == round(0.75 ** (n_layers - 1), 6)


def test_hf_export_local_dir_roundtrip(tmp_path) -> None:
    """export_hf writes config.json + model.safetensors; timm.create_model("local-dir:…", pretrained=True)
    gives the same logits."""
    from gaheads.export import export_hf, timm_supports_local_dir

    model = small("ga2_cct_2_3x2_32", num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: the weights must really come from the file
    written = export_hf(model, tmp_path / "hf", class_names=list("abcde"))
    assert [p.name for p in written] == ["config.json", "model.safetensors"]
    cfg = __import__("json").loads(written[0].read_text())
    assert (cfg["architecture"], cfg["num_classes"], cfg["label_names"]) == ("ga2_cct_2_3x2_32", 5, list("abcde"))
    assert cfg["pretrained_cfg"]["first_conv"] == "backbone.tokenizer.layers.0"
    x = small_input("ga2_cct_2_3x2_32", 3)
    if timm_supports_local_dir():
        loaded = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    overlay = timm.create_model("ga2_cct_2_3x2_32", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(
        file=str(written[1]), num_classes=5)).eval()
    with torch.no_grad():
        assert torch.equal(overlay(x), model(x))


def test_pretrained_file_and_checkpoint_path_for_pattern_model(tmp_path) -> None:
    """ga2@resnet18: its own cfg (no resnet18 url, first conv under backbone.model.), and both timm ways
    to load weights."""
    from safetensors.torch import save_file

    model = gaheads.create_model("ga2@resnet18", num_classes=3).eval()
    cfg = model.pretrained_cfg
    assert cfg["first_conv"] == "backbone.model.conv1" and not cfg.get("url") and not cfg.get("hf_hub_id")
    assert cfg["classifier"] + ".weight" in model.state_dict()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    by_file = gaheads.create_model("ga2@resnet18", num_classes=3, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors"))).eval()
    by_ckpt = gaheads.create_model("ga2@resnet18", num_classes=3, checkpoint_path=str(tmp_path / "w.pth")).eval()
    with torch.no_grad():
        assert torch.equal(by_file(x), model(x)) and torch.equal(by_ckpt(x), model(x))
    with pytest.raises(ValueError, match="no pretrained weights are published"):
        gaheads.create_model("ga2@resnet18", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights are published"):
        timm.create_model("ga2_cct_2_3x2_32", pretrained=True)


@pytest.mark.parametrize("name", ["ga2_cct_2_3x2_32", "seqattn2_cct_2_3x2_32", "sg2_cct_2_3x2_32", "at2_cct_2_3x2_32",
                                  "cct_2_3x2_32", "ga_convnext_tiny_688"])
def test_torchscript_script(name: str) -> None:
    """timm's test_model_forward_torchscript: torch.jit.script of the whole model, same logits."""
    model = small(name, scriptable=True).eval()
    scripted = torch.jit.script(model)
    x = small_input(name)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["ga", "seqattn", "sg", "at", "seqpool"])
def test_head_script_trace_save_export(kind: str, tmp_path) -> None:
    """Every head: torch.jit.script, torch.jit.trace + save + load, and torch.export give the eager logits,
    on both CPU formulations (1x1 convolutions and matmuls)."""
    from gaheads.heads import create_head
    from gaheads.heads.common import set_cpu_convolutions
    from gaheads.models.cct import head_kwargs

    torch.manual_seed(0)
    x = torch.randn(2, 64, 4, 4)
    for conv in (True, False):
        head = set_cpu_convolutions(create_head(kind, 64, 10, 3, **head_kwargs(kind, 64, 16)), conv).eval()
        with torch.no_grad():
            ref = head(x)
            torch.testing.assert_close(torch.jit.script(head)(x), ref, rtol=1e-5, atol=1e-6)
            torch.jit.save(torch.jit.trace(head, x), str(tmp_path / "head.pt"))
            torch.testing.assert_close(torch.jit.load(str(tmp_path / "head.pt"))(x), ref, rtol=1e-5, atol=1e-6)
            exported = torch.export.export(head, (x,))
            torch.testing.assert_close(exported.module()(x), ref, rtol=1e-5, atol=1e-6)


def test_train_with_layer_decay(tmp_path) -> None:
    """gaheads train --layer-decay 0.75: one epoch runs; the optimizer holds timm's per-layer lr scales."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_engine import make_imagefolder

    from gaheads.checkpoint import load_checkpoint
    from gaheads.train.config import parse_args
    from gaheads.train.engine import train

    data = make_imagefolder(tmp_path / "data", {"train": 8, "val": 4})
    summary = train(parse_args([str(data), "--model", "ga2_cct_2_3x2_32", "-b", "4", "-j", "0", "--opt", "adamw",
                                "--epochs", "1", "--aug-repeats", "0", "--layer-decay", "0.75", "--no-progress",
                                "--output", str(tmp_path / "out")]))
    groups = load_checkpoint(tmp_path / "out" / "last.pth")["optimizer"]["param_groups"]
    scales = sorted({round(g["lr_scale"], 6) for g in groups})
    assert summary["steps"] == 2
    assert scales == [round(0.75 ** i, 6) for i in range(len(scales) - 1, -1, -1)] and len(scales) == 4
