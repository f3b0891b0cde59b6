"""The batched K-branch heads equal K straightforward per-branch heads.

Same weights, same input: logits and attention weights agree to 1e-5 in float32; every
parameter's gradient, the input's gradient and the BN running statistics agree to 1e-5 of the
largest gradient in float32 (a bias in front of a train-mode BN has an exact gradient of zero,
so it carries only rounding noise of that size) and to 1e-9 in float64; train and eval mode.
"""

import pytest
import torch
from reference_heads import batched_tensors, randomize, reference_of

from gaheads.heads import common, create_head

KINDS = ["ga", "seqattn", "seqpool", "sg", "at"]
DIM, CLASSES = 32, 7


def head_kwargs(kind: str) -> dict:
    gram = dict(gram_dim=16, contraction_groups=4, embed_groups=8)
    attn = dict(attn_dim=16, mlp_groups=2)
    return {"ga": {**gram, **attn}, "sg": gram, "seqattn": attn, "at": attn, "seqpool": {}}[kind]


TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def as_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The map (B, C, H, W) as the batched head receives it: the map, a channels-last map, or tokens (B, N, C)."""
    if layout == "tokens":
        return x.flatten(2).transpose(1, 2).contiguous()
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def assert_equivalent(head: torch.nn.Module, x: torch.Tensor, layout: str = "map") -> None:
    tol = TOL[x.dtype]
    head.to(x.dtype)
    ref, ties = reference_of(head)
    xb, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, attn = head.forward_with_attention(as_layout(xb, layout))
    ref_out, ref_attn = ref.forward_with_attention(xr)
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    if ref_attn is None:
        assert attn is None
    else:
        torch.testing.assert_close(attn, ref_attn, atol=tol, rtol=tol)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    (ref_out * weight).sum().backward()
    grad_scale = max(t.ref.grad.abs().max().item() for t in ties if t.ref.grad is not None)
    # a bias feeding a train-mode BatchNorm has a true gradient of zero: what both sides compute is
    # round-off of the order tol * grad_scale, whose exact value moves between torch releases
    # (measured 2.5e-4 against a scale of 6.2 under torch 2.6.0; below 1e-4 under 2.14.1)
    atol, rtol = 10 * tol * max(1.0, grad_scale), 10 * tol
    torch.testing.assert_close(xb.grad, xr.grad, atol=atol, rtol=rtol)
    tensors = batched_tensors(head)
    compared = set()
    for tie in ties:
        batched = tensors[tie.name]
        if isinstance(batched, torch.nn.Parameter):
            torch.testing.assert_close(tie.pick(batched.grad), tie.ref.grad, atol=atol, rtol=rtol, msg=tie.name)
        else:  # BN running statistics after this forward
            torch.testing.assert_close(tie.pick(batched), tie.ref, atol=tol, rtol=tol, msg=tie.name)
        compared.add(tie.name)
    # every parameter and persistent buffer of the head was compared
    assert compared == set(head.state_dict())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,batch,hw,layout", [(1, 3, (4, 4), "map"), (3, 4, (3, 5), "tokens"),
                                               (5, 4, (1, 1), "channels_last")])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_head_equals_per_branch(kind, k, batch, hw, layout, train, dtype):
    head = create_head(kind, DIM, CLASSES, k, **head_kwargs(kind))
    randomize(head)
    head.train(train)
    assert_equivalent(head, torch.randn(batch, DIM, *hw, dtype=dtype), layout)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("layout", ["map", "tokens"])
def test_matmul_path_equals_per_branch(kind, train, layout):
    """The matmul formulation that non-CPU devices run, exercised on CPU."""
    head = common.set_cpu_convolutions(create_head(kind, DIM, CLASSES, 3, **head_kwargs(kind)), False)
    assert not any(getattr(m, "cpu_convolutions", False) for m in head.modules())
    randomize(head)
    head.train(train)
    assert_equivalent(head, torch.randn(4, DIM, 3, 5), layout)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("conv_rows", [None, 1])
def test_ga_head_with_convnext_gram_layer_equals_timm_blocks(train, dtype, conv_rows, monkeypatch):
    """GA with the batched ConvNeXt gram layer equals K branches each with its own timm ConvNeXtBlock.

    ``conv_rows=1`` sends the gram layer's per-token BranchLinear layers down their CPU
    grouped-convolution path, which otherwise starts at 1024 rows.
    """
    gram_layers = pytest.importorskip("gaheads.models.gram_layers")
    if conv_rows is not None:
        monkeypatch.setattr(common.BranchLinear, "conv_min_rows", conv_rows)
    k, d = 3, 16
    head = create_head("ga", DIM, CLASSES, k, **head_kwargs("ga"),
                       gram_layer=gram_layers.BranchConvNeXtBlock(d, k))
    randomize(head)
    head.train(train)
    assert_equivalent(head, torch.randn(3, DIM, 7, 7, dtype=dtype))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mid", [16, 8])
def test_ga_head_with_bottleneck_gram_layer_equals_timm_blocks(train, dtype, mid):
    """GA with the batched ResNet gram layer (GA-ResNet's) equals K branches each with its own timm
    ``Bottleneck(d, d // 4, base_width)`` of width ``mid``."""
    from gaheads.models.gram_layers import BranchBottleneck

    k, d = 3, 16
    head = create_head("ga", DIM, CLASSES, k, **head_kwargs("ga"), gram_layer=BranchBottleneck(d, k, mid))
    randomize(head)
    head.train(train)
    assert_equivalent(head, torch.randn(3, DIM, 7, 7, dtype=dtype))
