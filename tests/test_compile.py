"""torch.compile: every head traces as one graph (fullgraph=True) and computes what eager mode does;
no head reads a tensor value back to the host.

Inductor compiles are slow on a small CPU, so the per-head checks use the ``aot_eager``
backend (dynamo capture with fullgraph=True plus AOT autograd tracing of the backward, which
covers the custom gram autograd function) or dynamo capture alone, also for a whole CCT model's
training step; inductor itself compiles the GA-ConvNeXt-T head.
"""

import copy

import pytest
import torch
from model_fixtures import HEAD_KINDS, fresh_dynamo, small_head_kwargs  # noqa: F401  (a fixture)
from torch.profiler import profile

import gaheads
from gaheads.heads import create_head

KINDS = HEAD_KINDS
pytestmark = pytest.mark.usefixtures("fresh_dynamo")



# aot_eager also traces the backward; sg, at and seqpool are made of the modules ga and seqattn
# use, so for them the capture alone (the "eager" backend) shows that they trace as one graph
BACKENDS = {"ga": "aot_eager", "seqattn": "aot_eager", "sg": "eager", "at": "eager", "seqpool": "eager"}


@pytest.mark.parametrize("kind", KINDS)
def test_head_compiles_fullgraph_and_matches_eager_train_step(kind):
    head = create_head(kind, 32, 7, 3, **small_head_kwargs(kind)).train()
    eager = copy.deepcopy(head)
    compiled = torch.compile(head, fullgraph=True, backend=BACKENDS[kind])
    x = torch.randn(4, 32, 5, 5)
    out, ref = compiled(x), eager(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    (ref * weight).sum().backward()
    for (name, p), q in zip(head.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_ga_convnext_tiny_head_inductor_matches_eager():
    """The ga_convnext_tiny head (D = 688, d = 192, K = 5, e = 168, m = 4, ConvNeXt gram layer) at 14x14."""
    from gaheads.models.gram_layers import BranchConvNeXtBlock

    head = create_head("ga", 688, 1000, 5, gram_dim=192, contraction_groups=1, embed_groups=8, attn_dim=168,
                       mlp_groups=4, gram_layer=BranchConvNeXtBlock(192, 5)).eval()
    x = torch.randn(2, 688, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(head, fullgraph=True)(x), head(x), atol=1e-4, rtol=1e-4)


def test_cct_model_compiles_fullgraph_and_matches_eager_train_step():
    """A whole GA-CCT model as ``gaheads train --compile`` runs it: forward with branches, loss, backward."""
    model = gaheads.create_model("ga2_cct_2_3x2_32", drop_path_rate=0.0, attn_drop_rate=0.0).train()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    out, ref = compiled(x, return_branches=True), eager(x, return_branches=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.logsumexp(-1).sum().backward()
    ref.logsumexp(-1).sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


# ops that copy a tensor's value to the host (a GPU sync) or whose output shape depends on values
HOST_READS = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
              "aten::unique", "aten::_unique2", "aten::tolist"}


@pytest.mark.parametrize("kind", KINDS)
def test_head_train_step_reads_nothing_back_to_the_host(kind):
    head = create_head(kind, 32, 7, 3, **small_head_kwargs(kind)).train()
    x = torch.randn(4, 32, 5, 5)
    with profile() as prof:
        logits, _ = head.forward_with_attention(x)
        logits.sum().backward()
    names = {e.name for e in prof.events()}
    assert "aten::mkldnn_convolution" in names or kind == "seqpool"  # the CPU products ran as oneDNN convolutions
    assert not names & HOST_READS
