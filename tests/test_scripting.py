"""TorchScript, torch.fx, torch.jit.trace and torch.export on every model family and every head.

One small configuration per family (registered names with fewer / narrower layers and small
inputs): CCT with each head kind, GA-ConvNeXt, GA-ViT, GA-ResNet, the plain CSWin classifier,
GA-CSWin and ``<head><K>@<timm model>`` pattern models (a CNN map and ViT tokens with a class
token). Every check compares with the eager model's output on the same input. The full-size
models run as ``slow`` tests. ``benchmarks/timm_model_tests.sh`` runs timm's own tests.
"""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from timm.layers import DropPath, set_scriptable
from timm.models import get_notrace_functions, get_notrace_modules

import gaheads
from gaheads.heads import GramAttentionHead, create_head
from gaheads.heads.common import set_cpu_convolutions
from gaheads.models.cct import head_kwargs
from gaheads.models.ga_timm import GA_RESNET_ARCHS
from gaheads.models.gram_layers import BranchBottleneck, BranchConvNeXtBlock, BranchCSWinBlock

# name: (create kwargs, input side)
FAMILIES: dict[str, tuple[dict[str, Any], int]] = {
    "cct_7_3x1_32": (dict(depth=2), 32),
    "seqattn8_cct_7_3x1_32": (dict(depth=2), 32),
    "ga2_cct_7_3x1_32": (dict(depth=2), 32),
    "sg2_cct_2_3x2_32": ({}, 32),
    "at2_cct_2_3x2_32": ({}, 32),
    "ga_convnext_tiny": (dict(depths=(1, 1, 3, 1), dims=(16, 32, 64, 96), attn_dim=32, gram_dim=16,
                              num_intermediates=1), 64),
    "ga_vit_small": (dict(img_size=64, depth=2), 64),
    "ga_resnet50": (dict(model_name="resnet18", fifth_dim=64, gram_dim=32, attn_dim=32, num_intermediates=1), 64),
    "cswin_tiny_224": (dict(depths=(1, 1, 2, 1)), 112),
    "ga_cswin_tiny_224": (dict(depths=(1, 1, 2, 1), num_intermediates=1, fifth_dim=64, gram_dim=64, attn_dim=32),
                          112),
    "ga5@resnet18": ({}, 64),
    "seqattn2@vit_tiny_patch16_224": (dict(img_size=64, depth=2), 64),
}
# the registered configurations at timm's test sizes (its test_models.py's rule: at most 128, or the
# minimum / fixed size)
FULL: dict[str, int] = {"cct_7_3x1_32": 32, "seqattn8_cct_7_3x1_32": 32, "ga2_cct_7_3x1_32": 32, "ga_resnet50": 128,
                        "ga_convnext_tiny": 128, "ga_cswin_tiny_224": 112, "cswin_tiny_224": 112, "ga_vit_small": 224}
TOL = dict(rtol=1e-5, atol=1e-5)
FX_KW = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)


def build(name: str, full: bool = False, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {} if full else FAMILIES[name][0]
    with set_scriptable(True):
        if "model_name" in kw:  # another trunk: timm.create_model takes model_name itself
            return gaheads.models.GAResNet(**{**GA_RESNET_ARCHS[name], **kw}, num_classes=7, **kwargs)
        create = gaheads.create_model if "@" in name else timm.create_model
        return create(name, num_classes=7, **kw, **kwargs)


def image(name: str, batch: int = 2, full: bool = False) -> torch.Tensor:
    side = FULL[name] if full else FAMILIES[name][1]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def has_branches(model: torch.nn.Module) -> bool:
    return isinstance(model, gaheads.models.MultiBranchModel)


def check_script(model: torch.nn.Module, x: torch.Tensor, tmp_path) -> None:
    """torch.jit.script, then save + load: the eager logits (and per-branch logits)."""
    model.eval()
    # without the JIT's profiling passes: the same graph, run as compiled, in a fraction of the time
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), ref, **TOL)
        torch.jit.save(scripted, str(tmp_path / "m.pt"))
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
        torch.testing.assert_close(loaded(x), ref, **TOL)
        if has_branches(model):
            branches = model(x, return_branches=True)
            assert branches.shape == (x.shape[0], model.num_branches, 7)
            torch.testing.assert_close(loaded(x, True), branches, **TOL)
    assert ref.shape == (x.shape[0], 7)


def fx_model(model: torch.nn.Module) -> torch.fx.GraphModule:
    """timm's test helper: a feature extractor returning the graph's last node, in train and eval mode."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=FX_KW)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=FX_KW)


def fx_out(fx: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    (out,) = fx(x).values()
    return out


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout and drop path off (before tracing: FX keeps the rates as constants), so train mode is deterministic."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0
        if isinstance(getattr(m, "drop_path", None), float):  # the gram layers' per-branch rate
            m.drop_path = 0.0
    return model


def check_fx(model: torch.nn.Module, x: torch.Tensor) -> None:
    """timm's test_model_forward_fx / _backward_fx: eval and train outputs as eager; every parameter gets a gradient."""
    model = without_dropout(model).eval()
    with torch.no_grad():
        ref = model(x)
    fx = fx_model(model)  # shares the model's parameters and buffers
    with torch.no_grad():
        torch.testing.assert_close(fx_out(fx, x), ref, **TOL)
    model.train()
    torch.manual_seed(2)
    ref_train = model(x)
    fx.train()
    torch.manual_seed(2)
    out = fx_out(fx, x)
    torch.testing.assert_close(out, ref_train, **TOL)
    out.mean().backward()
    missing = [n for n, p in fx.named_parameters() if p.grad is None]
    assert missing == [] and out.shape == (x.shape[0], 7)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_script_matches_eager(name: str, tmp_path) -> None:
    check_script(build(name), image(name), tmp_path)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fx_matches_eager(name: str) -> None:
    check_fx(build(name), image(name))


@pytest.mark.parametrize("name", ["ga2_cct_7_3x1_32", "ga_resnet50", "cswin_tiny_224", "ga_cswin_tiny_224",
                                  "ga5@resnet18", "seqattn2@vit_tiny_patch16_224"])
def test_fx_then_script(name: str) -> None:
    """timm's test_model_forward_fx_torchscript: the FX graph (with its leaf functions) scripts, same logits."""
    model = build(name).eval()
    x = image(name)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = model(x)
        scripted = torch.jit.script(fx_model(model))
        torch.testing.assert_close(fx_out(scripted, x), ref, **TOL)


def test_scripted_cswin_keeps_stripe_check() -> None:
    """The scripted CSWin still refuses a map whose size the stripe width does not divide."""
    model = build("cswin_tiny_224").eval()
    scripted = torch.jit.script(model)
    bad = torch.randn(1, 3, 128, 128)  # stage 2 at 8x8: not divisible by stripe 7
    with pytest.raises(ValueError, match="not divisible by stripe"):
        model(bad)
    with pytest.raises(torch.jit.Error, match="not divisible by stripe"):
        scripted(bad)


def test_pattern_model_features_match_for_token_and_map_backbones() -> None:
    """The FX leaf for the backbone-to-head step drops ViT's class token and keeps a CNN map."""
    vit, cnn = build("seqattn2@vit_tiny_patch16_224").eval(), build("ga5@resnet18").eval()
    with torch.no_grad():
        tokens = vit.forward_features(image("seqattn2@vit_tiny_patch16_224"))
        fmap = cnn.forward_features(image("ga5@resnet18"))
    assert tokens.shape == (2, 16, 192) and fmap.shape == (2, 512, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL))
def test_full_size_script_and_fx(name: str, tmp_path) -> None:
    """The registered configurations: scripted and FX-traced logits equal eager ones."""
    model = build(name, full=True)
    x = image(name, batch=1, full=True)
    check_script(model, x, tmp_path)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fx_out(fx_model(model), x), model(x), **TOL)


def check_head(head: torch.nn.Module, x: torch.Tensor, tmp_path, save_export: bool = False) -> None:
    """torch.jit.script, torch.jit.trace + save + load and torch.export.export (+ save + load with
    ``save_export``) give the eager logits."""
    head.eval()
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = head(x)
        torch.testing.assert_close(torch.jit.script(head)(x), ref, **TOL)
        torch.jit.save(torch.jit.trace(head, x), str(tmp_path / "head.pt"))
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "head.pt"))(x), ref, **TOL)
        exported = torch.export.export(head, (x,))
        torch.testing.assert_close(exported.module()(x), ref, **TOL)
        if save_export:
            torch.export.save(exported, str(tmp_path / "head.pt2"))
            torch.testing.assert_close(torch.export.load(str(tmp_path / "head.pt2")).module()(x), ref, **TOL)


@pytest.mark.parametrize("kind", ["ga", "seqattn", "sg", "at", "seqpool"])
@pytest.mark.parametrize("conv", [True, False], ids=["conv", "matmul"])
def test_head_on_tokens(kind: str, conv: bool, tmp_path) -> None:
    """Every head on a (B, N, C) token sequence (what CCT and ViT give), both CPU formulations."""
    torch.manual_seed(0)
    head = set_cpu_convolutions(create_head(kind, 64, 10, 3, **head_kwargs(kind, 64, 16)), conv)
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    check_head(head, x, tmp_path, save_export=kind == "ga")


@pytest.mark.parametrize("layer", ["convnext", "bottleneck", "cswin"])
def test_ga_head_with_gram_layer(layer: str, tmp_path) -> None:
    """The GA head with each model family's gram layer (GA-ConvNeXt, GA-ResNet, GA-CSWin) on a 7x7 map."""
    torch.manual_seed(0)
    gram_layer = {"convnext": lambda: BranchConvNeXtBlock(32, 3), "bottleneck": lambda: BranchBottleneck(32, 3),
                  "cswin": lambda: BranchCSWinBlock(32, 3, 2, stripe=7)}[layer]()
    head = GramAttentionHead(64, 10, 3, gram_dim=32, attn_dim=16, gram_layer=gram_layer)
    with torch.no_grad():  # the bottleneck's last BN starts at 0 (an identity block): make it count
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    x = torch.randn(2, 64, 7, 7, generator=torch.Generator().manual_seed(1))
    check_head(head, x, tmp_path)
