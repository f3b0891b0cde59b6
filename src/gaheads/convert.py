"""Checkpoints of the two research releases -> gaheads models, through one name/shape table.

The releases keep one module per branch (``...gram_attention.3.attn.q.weight``); gaheads stacks
the K branches of every head layer along a leading axis (``head.block.q[3]``), runs the 1x1
convolutions of the heads as grouped linear layers, and names the encoder like timm's ViT
``Block``. :data:`RULES` lists, per model family, every release key pattern with the gaheads key
it fills and how (:data:`OPS`); nothing else in the package knows the release layout.

- :func:`read_release_checkpoint`: the state dict of a file the releases' training scripts wrote
  (timm's saver: ``{'state_dict': ...}`` and maybe ``state_dict_ema``; or a bare state dict),
  ``module.`` prefixes removed; read with ``torch.load(weights_only=True)`` only.
- :func:`convert_state_dict`: release state dict -> a gaheads model with those weights; a key
  or shape that does not fit raises :class:`ConvertError` with one line.
- :func:`to_release_state_dict`: the inverse (used by the tests to build release-format files).

What the releases keep but never use is dropped: the ``Linear(256 -> 100)`` of every GA / SG /
SeqAttention / AT CCT (the encoder's own classifier, bypassed by the head).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class ConvertError(ValueError):
    """A checkpoint that does not fit the requested model (one-line message)."""


# ---------------------------------------------------------------------------------------------------
# how one release tensor fills (part of) one gaheads tensor, and back
#   put(ours, k, K, release_tensor) writes into ``ours`` in place; take(ours, k, K) -> release tensor
# ``k`` is the branch index (0 for rules without branches), K the model's branch count.


def _put_copy(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    ours.copy_(t.reshape(ours.shape))


def _take_copy(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    return ours.clone()


def _put_branch(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    ours[k].copy_(t.reshape(ours[k].shape))


def _take_linear(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    # (g, out/g, in/g) -> a (out, in/g) Linear / grouped-conv weight
    return ours[k].reshape(-1, ours.shape[-1]).clone()


def _take_conv1x1(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    return _take_linear(ours, k, K)[:, :, None, None]


def _take_vector(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    return ours[k].reshape(-1).clone()


def _put_transpose(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    ours[k].copy_(t.t())


def _take_transpose(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    return ours[k].t().clone()


def _half(ours: torch.Tensor, k: int, which: int) -> torch.Tensor:
    e = ours.shape[-1] // 2
    return ours[k][:, which * e:(which + 1) * e]


def _put_key(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    _half(ours, k, 0).copy_(t.t())


def _put_value(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    _half(ours, k, 1).copy_(t.t())


def _chunk(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    n = ours.shape[0] // K
    return ours[k * n:(k + 1) * n]


def _put_chunk(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    dst = _chunk(ours, k, K)
    dst.copy_(t.reshape(dst.shape))


def _take_chunk(ours: torch.Tensor, k: int, K: int) -> torch.Tensor:
    return _chunk(ours, k, K).clone()


def _put_count(ours: torch.Tensor, k: int, K: int, t: torch.Tensor) -> None:
    ours.copy_(torch.maximum(ours, t.reshape(ours.shape)) if k else t.reshape(ours.shape))


@dataclass(frozen=True)
class Op:
    put: Callable[[torch.Tensor, int, int, torch.Tensor], None]
    take: Callable[[torch.Tensor, int, int], torch.Tensor]
    about: str


OPS: dict[str, Op] = {
    "copy": Op(_put_copy, _take_copy, "same values, same layout"),
    "linear": Op(_put_branch, _take_linear, "branch k of a stacked (K, g, out/g, in/g) weight <- a Linear weight"),
    "conv1x1": Op(_put_branch, _take_conv1x1, "branch k of a stacked weight <- a 1x1 (grouped) Conv2d weight"),
    "vector": Op(_put_branch, _take_vector, "row k of a (K, n) parameter <- a 1-D parameter (bias, LN, LayerScale)"),
    "row": Op(_put_branch, lambda o, k, K: o[k].reshape(1, -1).clone(),
              "row k of a Linear(C -> K) weight <- a Linear(C -> 1) weight"),
    "scalar": Op(_put_branch, lambda o, k, K: o[k].reshape(1).clone(), "entry k of a (K,) bias <- a (1,) bias"),
    "transpose": Op(_put_transpose, _take_transpose, "branch k of a (K, C, e) projection <- a Linear(C -> e) weight"),
    "key": Op(_put_key, lambda o, k, K: _half(o, k, 0).t().clone(), "keys: first half of branch k's (C, 2e) kv"),
    "value": Op(_put_value, lambda o, k, K: _half(o, k, 1).t().clone(), "values: second half of branch k's kv"),
    "bn": Op(_put_chunk, _take_chunk, "slice k of a K*d BatchNorm <- a d-channel BatchNorm (stats and affine)"),
    "chunk": Op(_put_chunk, _take_chunk, "slice k of a K*d depthwise conv <- a d-channel depthwise conv"),
    "count": Op(_put_count, lambda o, k, K: o.clone(), "num_batches_tracked: one counter for K BatchNorms"),
    "drop": Op(lambda o, k, K, t: None, lambda o, k, K: o.clone(), "kept by the release, unused: dropped"),
}


@dataclass(frozen=True)
class Rule:
    """``release`` key pattern -> ``ours`` key, by ``op``.

    Placeholders: {i} a layer index, {k} a branch, {p} any dotted rest of the key (copied as is);
    in ``ours`` also {i3} = 3·i.
    """

    release: str
    ours: str
    op: str

    @property
    def regex(self) -> re.Pattern:
        pattern = re.escape(self.release).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{k\}", r"(?P<k>\d+)")
        return re.compile(pattern.replace(r"\{p\}", r"(?P<p>[\w.]+)") + "$")

    def our_key(self, i: int | None, p: str = "") -> str:
        return self.ours.format(i=i, i3=3 * (i or 0), p=p)


def _bn(release: str, ours: str) -> list[Rule]:
    rules = [Rule(f"{release}.{p}", f"{ours}.{p}", "bn") for p in ("weight", "bias", "running_mean", "running_var")]
    return rules + [Rule(f"{release}.num_batches_tracked", f"{ours}.num_batches_tracked", "count")]


def _cct_encoder() -> list[Rule]:
    enc = "classifier.blocks.{i}"
    ours = "backbone.blocks.{i}"
    rules = [Rule("tokenizer.conv_layers.{i}.0.weight", "backbone.tokenizer.layers.{i3}.weight", "copy"),
             Rule("classifier.positional_emb", "backbone.pos_embed", "copy"),
             Rule(f"{enc}.attn.qkv.weight", f"{ours}.attn.qkv.weight", "copy")]
    for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.proj.weight", "attn.proj.bias"):
        rules.append(Rule(f"{enc}.{name}", f"{ours}.{name}", "copy"))
    for theirs, mine in (("linear1", "fc1"), ("linear2", "fc2")):
        rules += [Rule(f"{enc}.mlp.{theirs}.{p}", f"{ours}.mlp.{mine}.{p}", "copy") for p in ("weight", "bias")]
    return rules + [Rule(f"classifier.norm.{p}", f"backbone.norm.{p}", "copy") for p in ("weight", "bias")]


def _class_attention(release: str, ours: str = "head.block") -> list[Rule]:
    r = f"{release}.{{k}}"
    rules = [Rule(f"{r}.gamma_1", f"{ours}.gamma1", "vector"), Rule(f"{r}.gamma_2", f"{ours}.gamma2", "vector"),
             Rule(f"{r}.attn.q.weight", f"{ours}.q", "transpose"),
             Rule(f"{r}.attn.k.weight", f"{ours}.kv", "key"), Rule(f"{r}.attn.v.weight", f"{ours}.kv", "value"),
             Rule(f"{r}.attn.proj.weight", f"{ours}.proj.weight", "linear"),
             Rule(f"{r}.attn.proj.bias", f"{ours}.proj.bias", "vector"),
             Rule(f"{r}.mlp.fc1.weight", f"{ours}.fc1.weight", "conv1x1"),
             Rule(f"{r}.mlp.fc1.bias", f"{ours}.fc1.bias", "vector"),
             Rule(f"{r}.mlp.fc2.weight", f"{ours}.fc2.weight", "conv1x1"),
             Rule(f"{r}.mlp.fc2.bias", f"{ours}.fc2.bias", "vector")]
    for norm in ("norm1", "norm2"):
        rules += [Rule(f"{r}.{norm}.{p}", f"{ours}.{norm}.{p}", "vector") for p in ("weight", "bias")]
    return rules


def _gram_query(release: str) -> list[Rule]:
    c, e = f"{release}.gram_contraction.{{k}}", f"{release}.gram_embedding.{{k}}"
    return [Rule(f"{c}.1.weight", "head.query.contract.weight", "conv1x1"),
            Rule(f"{c}.1.bias", "head.query.contract.bias", "vector"), *_bn(f"{c}.2", "head.query.contract_bn"),
            Rule(f"{e}.0.weight", "head.query.embed.weight", "conv1x1"),
            Rule(f"{e}.0.bias", "head.query.embed.bias", "vector"), *_bn(f"{e}.1", "head.query.embed_bn")]


def _branch_classifier(release: str) -> list[Rule]:
    return [Rule(f"{release}.{{k}}.weight", "head.classifier.weight", "linear"),
            Rule(f"{release}.{{k}}.bias", "head.classifier.bias", "vector")]


_UNUSED_FC = [Rule(f"classifier.fc.{p}", "", "drop") for p in ("weight", "bias")]
_GA = "classifier.gramian_attn_head"
_SG = "classifier.simgram"
_SA = "classifier.seq_attn_head"
_AT = "classifier.no_gram_attn_head"

#: every model family the releases define, as (release key pattern -> gaheads key, op) rules
RULES: dict[str, list[Rule]] = {
    "cct": [*_cct_encoder(), Rule("classifier.attention_pool.weight", "head.pooling.score.weight", "copy"),
            Rule("classifier.attention_pool.bias", "head.pooling.score.bias", "copy"),
            Rule("classifier.fc.weight", "head.classifier.weight", "linear"),
            Rule("classifier.fc.bias", "head.classifier.bias", "vector")],
    "ga": [*_cct_encoder(), *_UNUSED_FC, *_gram_query(_GA), *_class_attention(f"{_GA}.gram_attention"),
           *_branch_classifier(f"{_GA}.fc")],
    "sg": [*_cct_encoder(), *_UNUSED_FC, *_gram_query(_SG), *_branch_classifier(f"{_SG}.fc")],
    "seqattn": [*_cct_encoder(), *_UNUSED_FC, Rule(f"{_SA}.fc_in.{{k}}.weight", "head.pooling.score.weight", "row"),
                Rule(f"{_SA}.fc_in.{{k}}.bias", "head.pooling.score.bias", "scalar"),
                *_class_attention(f"{_SA}.gram_attention"), *_branch_classifier(f"{_SA}.final_fc")],
    "at": [*_cct_encoder(), *_UNUSED_FC, Rule(f"{_AT}.fc.0.weight", "head.token_query.fc.weight", "copy"),
           Rule(f"{_AT}.fc.0.bias", "head.token_query.fc.bias", "copy"),
           *_class_attention(f"{_AT}.attention"), *_branch_classifier(f"{_AT}.final_fc")],
}
_GL = "gram_layer.{k}.blocks.0"
# GA-ConvNeXt: timm ConvNeXt names for the four stages (ours sit under backbone.), the fifth stage
# (an SE bottleneck whose projection shortcut the release calls ``downsample``), then K branches
RULES["convnext"] = [
    Rule("stem.{p}", "backbone.stem.{p}", "copy"),
    Rule("stages.4.downsample.{p}", "backbone.fifth.shortcut.{p}", "copy"),
    Rule("stages.4.{p}", "backbone.fifth.{p}", "copy"),
    Rule("stages.{p}", "backbone.stages.{p}", "copy"),
    Rule("gram_contraction.{k}.0.weight", "head.query.contract.weight", "conv1x1"),
    Rule("gram_contraction.{k}.0.bias", "head.query.contract.bias", "vector"),
    *_bn("gram_contraction.{k}.1", "head.query.contract_bn"),
    Rule(f"{_GL}.gamma", "head.query.gram_layer.gamma", "vector"),
    Rule(f"{_GL}.conv_dw.weight", "head.query.gram_layer.conv_dw.weight", "chunk"),
    Rule(f"{_GL}.conv_dw.bias", "head.query.gram_layer.conv_dw.bias", "chunk"),
    Rule(f"{_GL}.norm.weight", "head.query.gram_layer.norm.weight", "vector"),
    Rule(f"{_GL}.norm.bias", "head.query.gram_layer.norm.bias", "vector"),
    *[Rule(f"{_GL}.mlp.{fc}.weight", f"head.query.gram_layer.mlp.{fc}.weight", "linear") for fc in ("fc1", "fc2")],
    *[Rule(f"{_GL}.mlp.{fc}.bias", f"head.query.gram_layer.mlp.{fc}.bias", "vector") for fc in ("fc1", "fc2")],
    Rule("gram_embedding.{k}.0.weight", "head.query.embed.weight", "conv1x1"),
    Rule("gram_embedding.{k}.0.bias", "head.query.embed.bias", "vector"),
    *_bn("gram_embedding.{k}.1", "head.query.embed_bn"),
    *_class_attention("ga"), *_branch_classifier("fc"),
]
#: the rule whose {k} values count a checkpoint's branches, per family
BRANCH_KEY = {"ga": f"{_GA}.fc.{{k}}.weight", "sg": f"{_SG}.fc.{{k}}.weight",
              "seqattn": f"{_SA}.final_fc.{{k}}.weight", "at": f"{_AT}.final_fc.{{k}}.weight",
              "convnext": "fc.{k}.weight"}
#: the release key holding the classifier weight (its rows are the classes), per family
CLASSIFIER_KEY = {"cct": "classifier.fc.weight", **BRANCH_KEY}


def model_family(name: str) -> str:
    """``cct_7_3x1_32`` -> ``cct``; ``ga8_cct_7_3x1_32`` -> ``ga``; ConvertError for a model the releases lack."""
    if re.fullmatch(r"ga_convnext_(tiny|small|base)(_\d+)?", name):
        return "convnext"
    m = re.fullmatch(r"(?:(ga|sg|seqattn|at)(\d+)_)?cct_\d+_\dx\d_32", name)
    if not m:
        raise ConvertError(f"{name}: the releases define no such model (convertible: cct_*, "
                           "ga/sg/seqattn/at<K>_cct_*, ga_convnext_*)")
    return m.group(1) or "cct"


# ---------------------------------------------------------------------------------------------------


def read_release_checkpoint(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a release checkpoint (``use_ema``: its ``state_dict_ema``), ``module.`` removed.

    Accepts timm's saver format (``state_dict``, ``state_dict_ema``, plus optimizer and args,
    which are ignored), ``{'model': ...}`` and a bare state dict. Loaded with ``weights_only=True``.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except Exception as e:  # unpickling refused or a corrupt file: say which, in one line
        raise ConvertError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if use_ema:
        if "state_dict_ema" not in obj:
            raise ConvertError(f"{path}: has no state_dict_ema (drop --ema to convert the raw weights)")
        state = obj["state_dict_ema"]
    elif "state_dict" in obj:
        state = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
    elif "state_dict_ema" in obj:
        state = obj["state_dict_ema"]
    else:
        state = obj
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConvertError(f"{path}: no tensors found (expected a state dict or timm's {{'state_dict': ...}})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in tensors.items()}


def _matches(rules: list[Rule], key: str) -> tuple[Rule, int | None, int, str] | None:
    for rule in rules:
        m = rule.regex.match(key)
        if m:
            g = m.groupdict()
            return rule, (int(g["i"]) if g.get("i") is not None else None), int(g.get("k") or 0), g.get("p") or ""
    return None


def checkpoint_branches(state: Mapping[str, torch.Tensor], family: str) -> int:
    """How many branches a release state dict has (1 for plain CCT)."""
    if family not in BRANCH_KEY:
        return 1
    regex = Rule(BRANCH_KEY[family], "", "copy").regex
    ks = [int(m.group("k")) for m in map(regex.match, state) if m]
    return max(ks) + 1 if ks else 0


def model_kwargs_for(state: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """The construction kwargs a release state dict implies: ``num_classes`` and ``img_size`` (from
    the positional embedding), and for SG the released attention-free encoder."""
    from .models.cct import CCT_ARCHS

    family = model_family(name)
    kwargs: dict[str, Any] = {}
    cls_key = CLASSIFIER_KEY[family].replace("{k}", "0")
    if cls_key in state:
        kwargs["num_classes"] = int(state[cls_key].shape[0])
    if family == "convnext":
        return kwargs
    pos = state.get("classifier.positional_emb")
    if pos is not None and pos.ndim == 3:
        side = math.isqrt(int(pos.shape[1]))
        arch = CCT_ARCHS[name.split("_", 1)[1] if family != "cct" else name]
        kwargs["img_size"] = side * 2 ** arch["num_conv_layers"]
    if family == "sg":
        kwargs["encoder_attention"] = "identity"  # the weights were trained without encoder attention
    return kwargs


def convert_state_dict(state: Mapping[str, torch.Tensor], name: str, **model_kwargs: Any) -> nn.Module:
    """A gaheads model ``name`` carrying the weights of release state dict ``state``, in eval mode.

    Every release key must match a rule and fill an existing tensor of a fitting shape, and
    every tensor of the model must be filled; otherwise ConvertError (one line).
    """
    import timm

    family = model_family(name)
    rules = RULES[family]
    k_ckpt = checkpoint_branches(state, family)
    kwargs = {**model_kwargs_for(state, name), **model_kwargs}
    model = timm.create_model(name, **kwargs)
    k_model = model.num_branches
    if k_ckpt == 0:
        raise ConvertError(f"the checkpoint has no {family} head (no key like {BRANCH_KEY[family].format(k=0)!r}); "
                           f"is it another model's?")
    if k_ckpt != k_model:
        hint = re.sub(r"^[a-z]+\d+", f"{family}{k_ckpt}", name) if k_ckpt else None
        raise ConvertError(f"the checkpoint has {k_ckpt} branches, {name} has {k_model}"
                           + (f": convert with --model {hint}" if hint else ""))
    ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
    filled: set[str] = set()
    for key, tensor in state.items():
        hit = _matches(rules, key)
        if hit is None:
            raise ConvertError(f"unexpected key {key!r} for {name} (is this a {family} checkpoint?)")
        rule, i, k, rest = hit
        if rule.op == "drop":
            continue
        target = rule.our_key(i, rest)
        if target not in ours:
            raise ConvertError(f"{key!r} has no counterpart in {name} ({target} missing: another depth?)")
        try:
            OPS[rule.op].put(ours[target], k, k_model, tensor.to(ours[target].dtype))
        except (RuntimeError, IndexError):
            raise ConvertError(f"{key!r} of shape {tuple(tensor.shape)} does not fit {target} of shape "
                               f"{tuple(ours[target].shape)} in {name}") from None
        filled.add(target)
    missing = sorted(set(ours) - filled)
    if missing:
        raise ConvertError(f"the checkpoint lacks weights for {len(missing)} tensor(s) of {name}, e.g. {missing[0]}")
    model.load_state_dict(ours)
    return model.eval()


def _release_keys(rules: list[Rule], ours: Mapping[str, torch.Tensor], K: int) -> Iterator[tuple[str, str, Rule, int]]:
    depth = 1 + max((int(m.group(1)) for m in map(re.compile(r"backbone\.blocks\.(\d+)\.").match, ours) if m),
                    default=-1)
    convs = 1 + max((int(m.group(1)) // 3 for m in map(re.compile(r"backbone\.tokenizer\.layers\.(\d+)\.").match, ours)
                     if m), default=-1)
    claimed: set[str] = set()
    for rule in rules:
        if rule.op == "drop":
            continue
        if "{p}" in rule.ours:  # every key under the prefix that an earlier rule did not take
            prefix = rule.ours.split("{p}")[0]
            for target in [t for t in ours if t.startswith(prefix) and t not in claimed]:
                claimed.add(target)
                yield rule.release.replace("{p}", target[len(prefix):]), target, rule, 0
            continue
        n_i = convs if rule.release.startswith("tokenizer") else depth
        for i in (range(n_i) if "{i}" in rule.release else [None]):
            for k in (range(K) if "{k}" in rule.release else [0]):
                key = rule.release.format(i=i, k=k)
                target = rule.our_key(i)
                if target in ours:
                    yield key, target, rule, k


def to_release_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The state dict the release would hold for ``model`` (the inverse of :func:`convert_state_dict`).

    Includes the release's unused encoder classifier (random values: nothing reads it).
    """
    family = model_family(name)
    ours = model.state_dict()
    K = getattr(model, "num_branches", 1)
    out = {key: OPS[rule.op].take(ours[target], k, K) for key, target, rule, k in _release_keys(RULES[family], ours, K)}
    if family not in ("cct", "convnext"):
        dim, classes = ours["backbone.pos_embed"].shape[-1], model.num_classes
        gen = torch.Generator().manual_seed(0)
        out["classifier.fc.weight"] = torch.randn(classes, dim, generator=gen)
        out["classifier.fc.bias"] = torch.randn(classes, generator=gen)
    return out


def convert_checkpoint(path: str | os.PathLike, name: str, output: str | os.PathLike, use_ema: bool = False,
                       **model_kwargs: Any) -> tuple[nn.Module, tuple[Any, Any]]:
    """Read a release checkpoint, convert it to ``name`` and write ``output`` (.safetensors + .json)."""
    from .checkpoint import save_weights

    model = convert_state_dict(read_release_checkpoint(path, use_ema), name, **model_kwargs)
    return model, save_weights(model, output, extra={"converted_from": os.fspath(path)})
