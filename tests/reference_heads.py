"""Readable per-branch versions of every head, for checking the batched heads against.

Each branch is a plain module built from nn.Conv2d(groups=...), nn.BatchNorm2d, nn.LayerNorm and
nn.Linear, run one after another; the class attention concatenates [q, X] explicitly and the MLP
shuffles channels explicitly. ``reference_of(head)`` builds the K reference branches and copies
the batched head's weights and BN statistics into them; the returned ties map every reference
tensor back to the slice of the batched tensor it came from, so gradients and running
statistics can be compared entry by entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXtBlock
from timm.models.resnet import Bottleneck
from torch import nn

from gaheads.heads import AttentionOnlyHead, GramAttentionHead, SeqAttentionHead, SeqPoolHead, SimpleGramHead
from gaheads.heads.class_attention import ClassAttentionBlock


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, 1, 1): view the C channels as (C/m, m), transpose to (m, C/m), flatten."""
    b, c = x.shape[:2]
    return x.view(b, c // groups, groups).transpose(1, 2).reshape(b, c, 1, 1)


class RefClassAttention(nn.Module):
    """One LayerScale class-attention block: q (B, 1, C), X (B, N, C) -> q (B, 1, C)."""

    def __init__(self, dim: int, attn_dim: int, mlp_groups: int, num_heads: int = 8) -> None:
        super().__init__()
        self.num_heads, self.mlp_groups = num_heads, mlp_groups
        self.scale = (attn_dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.q = nn.Linear(dim, attn_dim, bias=False)
        self.k = nn.Linear(dim, attn_dim, bias=False)
        self.v = nn.Linear(dim, attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim)
        self.gamma1 = nn.Parameter(torch.empty(dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.fc1 = nn.Conv2d(dim, 4 * dim, 1, groups=mlp_groups)
        self.fc2 = nn.Conv2d(4 * dim, dim, 1, groups=mlp_groups)
        self.gamma2 = nn.Parameter(torch.empty(dim))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n1 = q.shape[0], x.shape[1] + 1
        u = self.norm1(torch.cat([q, x], dim=1))  # (B, 1+N, C)
        heads = lambda t: t.view(b, t.shape[1], self.num_heads, -1).transpose(1, 2)  # noqa: E731
        query, keys, values = heads(self.q(u[:, :1])), heads(self.k(u)), heads(self.v(u))
        attn = (query @ keys.transpose(-1, -2) * self.scale).softmax(dim=-1)  # (B, h, 1, 1+N)
        out = (attn @ values).transpose(1, 2).reshape(b, 1, -1)
        q = q + self.gamma1 * self.proj(out)
        y = self.norm2(q).reshape(b, -1, 1, 1)
        y = self.fc2(channel_shuffle(F.gelu(self.fc1(y)), self.mlp_groups))
        q = q + self.gamma2 * y.reshape(b, 1, -1)
        return q, attn.reshape(b, self.num_heads, n1)


class RefGramEmbedding(nn.Module):
    """GA steps 1-4 for one branch: map (B, C, H, W) -> query token (B, 1, C)."""

    def __init__(self, dim: int, gram_dim: int, contraction_groups: int, embed_groups: int,
                 gram_layer: nn.Module | None) -> None:
        super().__init__()
        d = gram_dim
        self.contract = nn.Conv2d(dim, d, 1, groups=contraction_groups)
        self.contract_bn = nn.BatchNorm2d(d)
        self.gram_layer = gram_layer
        self.embed = nn.Conv2d(d * (d + 1) // 2, dim, 1, groups=embed_groups)
        self.embed_bn = nn.BatchNorm2d(dim)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        xc = self.contract_bn(self.contract(x))
        if self.gram_layer is not None:
            xc = self.gram_layer(xc)
        z = (xc / h).flatten(2)  # (B, d, HW)
        g = z @ z.transpose(1, 2) / (h * w)
        rows, cols = torch.triu_indices(g.shape[1], g.shape[1])
        return F.normalize(g[:, rows, cols], dim=-1, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.embed_bn(self.embed(self.gram(x)[:, :, None, None])).reshape(b, 1, -1)


class RefSeqPool(nn.Module):
    """w = softmax_N(Linear(C -> 1)(X)); returns wᵀX (B, 1, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.score(tokens).softmax(dim=1).transpose(1, 2) @ tokens


class RefBranch(nn.Module):
    """One branch: a query source (gram embedding, SeqPool, or a shared query), an optional block, a classifier."""

    def __init__(self, dim: int, num_classes: int, query: nn.Module | None, block: RefClassAttention | None) -> None:
        super().__init__()
        self.query, self.block = query, block
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, shared_query: torch.Tensor | None = None):
        tokens = x.flatten(2).transpose(1, 2)
        if isinstance(self.query, RefGramEmbedding):
            q = self.query(x)
        elif self.query is not None:
            q = self.query(tokens)
        else:
            q = shared_query
        attn = None
        if self.block is not None:
            q, attn = self.block(q, tokens)
        return self.classifier(q[:, 0]), attn


class RefHead(nn.Module):
    """K reference branches run one after another; (B, C, H, W) -> (B, K, n) and attention (B, K, h, 1+N)."""

    def __init__(self, branches: list[RefBranch], shared_pool: RefSeqPool | None = None) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.shared_pool = shared_pool

    def forward_with_attention(self, x: torch.Tensor):
        shared = self.shared_pool(x.flatten(2).transpose(1, 2)) if self.shared_pool is not None else None
        outs = [branch(x, shared) for branch in self.branches]
        logits = torch.stack([o[0] for o in outs], dim=1)
        attn = torch.stack([o[1] for o in outs], dim=1) if outs[0][1] is not None else None
        return logits, attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]


@dataclass
class Tie:
    """A reference tensor (``owner.attr``) and where it lives in the batched head: its values are
    ``pick(batched_tensor)`` with the batched tensor named ``name``. The tensor is looked up on
    access because ``module.to(dtype)`` replaces buffers."""

    owner: nn.Module
    attr: str
    name: str
    pick: Callable[[torch.Tensor], torch.Tensor]

    @property
    def ref(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)


def _grouped_conv_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Batched (K, g, out/g, in/g) -> branch k's Conv2d weight (out, in/g, 1, 1)."""
    return w[k].reshape(-1, w.shape[-1])[:, :, None, None]


def _linear_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Batched BranchLinear (K, 1, out, in) -> branch k's Linear weight (out, in)."""
    return w[k, 0]


def _per_branch_ties(ref: nn.Module, name: str, k: int) -> list[Tie]:
    """A LayerNorm's weight and bias: row k of the batched (K, C) tensors."""
    return [Tie(ref, a, f"{name}.{a}", lambda t: t[k]) for a in ("weight", "bias")]


def _ties_block(ref: RefClassAttention, prefix: str, k: int, e: int) -> list[Tie]:
    p = prefix
    return [
        *_per_branch_ties(ref.norm1, f"{p}norm1", k),
        Tie(ref.q, "weight", f"{p}q", lambda t: t[k].T),
        Tie(ref.k, "weight", f"{p}kv", lambda t: t[k, :, :e].T),
        Tie(ref.v, "weight", f"{p}kv", lambda t: t[k, :, e:].T),
        Tie(ref.proj, "weight", f"{p}proj.weight", lambda t: _linear_weight(t, k)),
        Tie(ref.proj, "bias", f"{p}proj.bias", lambda t: t[k]),
        Tie(ref, "gamma1", f"{p}gamma1", lambda t: t[k]), Tie(ref, "gamma2", f"{p}gamma2", lambda t: t[k]),
        *_per_branch_ties(ref.norm2, f"{p}norm2", k),
        Tie(ref.fc1, "weight", f"{p}fc1.weight", lambda t: _grouped_conv_weight(t, k)),
        Tie(ref.fc1, "bias", f"{p}fc1.bias", lambda t: t[k]),
        Tie(ref.fc2, "weight", f"{p}fc2.weight", lambda t: _grouped_conv_weight(t, k)),
        Tie(ref.fc2, "bias", f"{p}fc2.bias", lambda t: t[k]),
    ]


def _bn_ties(ref: nn.BatchNorm2d, name: str, k: int) -> list[Tie]:
    c = ref.num_features
    part = lambda t: t[k * c:(k + 1) * c]  # noqa: E731  (BatchNorm1d(K*c) = K BatchNorm2d(c))
    return [Tie(ref, a, f"{name}.{a}", part) for a in ("weight", "bias", "running_mean", "running_var")] + [
        Tie(ref, "num_batches_tracked", f"{name}.num_batches_tracked", lambda t: t)]


def _convnext_block_ties(ref: ConvNeXtBlock, prefix: str, k: int, d: int) -> list[Tie]:
    p = prefix
    return [
        Tie(ref.conv_dw, "weight", f"{p}conv_dw.weight", lambda t: t[k * d:(k + 1) * d]),
        Tie(ref.conv_dw, "bias", f"{p}conv_dw.bias", lambda t: t[k * d:(k + 1) * d]),
        *_per_branch_ties(ref.norm, f"{p}norm", k),
        Tie(ref.mlp.fc1, "weight", f"{p}mlp.fc1.weight", lambda t: _linear_weight(t, k)),
        Tie(ref.mlp.fc1, "bias", f"{p}mlp.fc1.bias", lambda t: t[k]),
        Tie(ref.mlp.fc2, "weight", f"{p}mlp.fc2.weight", lambda t: _linear_weight(t, k)),
        Tie(ref.mlp.fc2, "bias", f"{p}mlp.fc2.bias", lambda t: t[k]),
        Tie(ref, "gamma", f"{p}gamma", lambda t: t[k]),
    ]


def _bottleneck_ties(ref: Bottleneck, prefix: str, k: int) -> list[Tie]:
    """Branch k's rows of the grouped convs (groups = K) and its channels of the K-wide BNs."""
    ties = []
    for i in (1, 2, 3):
        conv = getattr(ref, f"conv{i}")
        rows = conv.out_channels
        ties.append(Tie(conv, "weight", f"{prefix}conv{i}.weight", lambda t, r=rows: t[k * r:(k + 1) * r]))
        ties += _bn_ties(getattr(ref, f"bn{i}"), f"{prefix}bn{i}", k)
    return ties


def _reference_gram_layer(layer: nn.Module | None, k: int, prefix: str) -> tuple[nn.Module | None, list[Tie]]:
    if layer is None:
        return None, []
    from gaheads.models.gram_layers import BranchBottleneck, BranchConvNeXtBlock

    if isinstance(layer, BranchConvNeXtBlock):
        ref = ConvNeXtBlock(layer.dim, ls_init_value=1.0)
        return ref, _convnext_block_ties(ref, prefix, k, layer.dim)
    if isinstance(layer, BranchBottleneck):
        mid = layer.conv1.out_channels // layer.num_branches
        ref = Bottleneck(layer.dim, layer.dim // 4, base_width=64 * mid * 4 // layer.dim)  # width = mid
        assert ref.conv1.out_channels == mid and ref.conv3.out_channels == layer.dim
        return ref, _bottleneck_ties(ref, prefix, k)
    raise TypeError(f"no reference for gram layer {type(layer).__name__}")


def _reference_branch(head: nn.Module, k: int) -> tuple[RefBranch, list[Tie]]:
    dim, ties = head.dim, []
    query: nn.Module | None = None
    if isinstance(head, (GramAttentionHead, SimpleGramHead)):
        ge = head.query
        contract = ge.contract
        gram_layer, gl_ties = _reference_gram_layer(ge.gram_layer, k, "query.gram_layer.")
        query = RefGramEmbedding(dim, ge.gram_dim, contract.groups, ge.embed.groups, gram_layer)
        ties += [Tie(query.contract, "weight", "query.contract.weight", lambda t: _grouped_conv_weight(t, k)),
                 Tie(query.contract, "bias", "query.contract.bias", lambda t: t[k]),
                 Tie(query.embed, "weight", "query.embed.weight", lambda t: _grouped_conv_weight(t, k)),
                 Tie(query.embed, "bias", "query.embed.bias", lambda t: t[k])]
        ties += _bn_ties(query.contract_bn, "query.contract_bn", k) + _bn_ties(query.embed_bn, "query.embed_bn", k)
        ties += gl_ties
    elif isinstance(head, (SeqAttentionHead, SeqPoolHead)):
        query = RefSeqPool(dim)
        ties += [Tie(query.score, "weight", "pooling.score.weight", lambda t: t[k:k + 1]),
                 Tie(query.score, "bias", "pooling.score.bias", lambda t: t[k:k + 1])]
    block = None
    if isinstance(getattr(head, "block", None), ClassAttentionBlock):
        b = head.block
        block = RefClassAttention(dim, b.attn_dim, b.mlp_groups, b.num_heads)
        ties += _ties_block(block, "block.", k, b.attn_dim)
    branch = RefBranch(dim, head.num_classes, query, block)
    ties += [Tie(branch.classifier, "weight", "classifier.weight", lambda t: _linear_weight(t, k)),
             Tie(branch.classifier, "bias", "classifier.bias", lambda t: t[k])]
    return branch, ties


def reference_of(head: nn.Module) -> tuple[RefHead, list[Tie]]:
    """K per-branch reference modules holding copies of ``head``'s parameters and BN statistics.

    The reference gets the head's dtype and train/eval mode. Returns it and the ties
    (reference tensor, batched name, slice function) for comparing gradients and statistics.
    """
    branches, ties = [], []
    for k in range(head.num_branches):
        branch, branch_ties = _reference_branch(head, k)
        branches.append(branch)
        ties += branch_ties
    shared = None
    if isinstance(head, AttentionOnlyHead):
        shared = RefSeqPool(head.dim)
        ties += [Tie(shared.score, "weight", "pooling.score.weight", lambda t: t),
                 Tie(shared.score, "bias", "pooling.score.bias", lambda t: t)]
    dtype = next(head.parameters()).dtype
    ref = RefHead(branches, shared).to(dtype).train(head.training)
    copy_into_reference(head, ties)
    return ref, ties


def batched_tensors(head: nn.Module) -> dict[str, torch.Tensor]:
    """The head's parameters and buffers by name."""
    return {**dict(head.named_parameters()), **dict(head.named_buffers())}


@torch.no_grad()
def copy_into_reference(head: nn.Module, ties: list[Tie]) -> None:
    """Copy every batched tensor's slice into its reference tensor."""
    tensors = batched_tensors(head)
    for tie in ties:
        tie.ref.copy_(tie.pick(tensors[tie.name]))


@torch.no_grad()
def randomize(head: nn.Module) -> None:
    """Move every parameter and BN statistic off its init, so that no term of the head is negligible
    (LayerScale starts at 1e-4, which would hide the attention and MLP from a 1e-5 comparison)."""
    for name, p in head.named_parameters():
        p.add_(torch.randn_like(p) * (0.3 if "gamma" in name else 0.1))
    for name, buf in head.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
