"""Compact Convolutional Transformer backbone (Hassani et al. 2021).

timm has no CCT. The encoder layers are timm's ViT ``Block``; what is written here is the
convolutional tokenizer and the assembly. ``forward_features`` returns the final-normed
tokens (B, N, C); any head of ``gaheads.heads`` turns them into logits.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq, register_notrace_function
from timm.models.vision_transformer import Attention, Block
from torch import nn


def init_transformer_weights(m: nn.Module) -> None:
    """Linear: trunc-normal std 0.02, zero bias; LayerNorm: weight 1, bias 0 (use with ``module.apply``)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PassThroughAttention(Attention):
    """Self-attention that returns its input (the LN1 output) unchanged; qkv/proj are kept but unused.

    A research-code artefact: the released SG ablation's encoder attention did this, so its
    encoder layers computed ``x + drop_path(LN1(x))`` followed by the MLP. Only for reproducing
    that published row; its qkv/proj weights get no gradient (DDP needs ``find_unused_parameters``).
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return x


ENCODER_ATTENTION = {"softmax": Attention, "identity": PassThroughAttention}


class ConvTokenizer(nn.Module):
    """n x [conv kxk stride 1 (no bias) -> ReLU -> MaxPool 3x3 stride 2 pad 1]; (B,3,H,W) -> (B,N,C)."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int = 3, num_layers: int = 1,
                 hidden_chans: int = 64) -> None:
        super().__init__()
        chans = [in_chans] + [hidden_chans] * (num_layers - 1) + [embed_dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, stride=1, padding=kernel_size // 2, bias=False),
                       nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        self.layers = nn.Sequential(*layers)
        self.num_layers = num_layers

    def grid_size(self, img_size: int) -> int:
        for _ in range(self.num_layers):
            img_size = (img_size - 1) // 2 + 1  # MaxPool 3/2/1
        return img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)


def attention_layer(kind: str) -> type[nn.Module]:
    """The encoder's attention class for ``kind`` (``"softmax"`` or ``"identity"``)."""
    try:
        return ENCODER_ATTENTION[kind]
    except KeyError:
        raise ValueError(f"encoder_attention must be one of {sorted(ENCODER_ATTENTION)}, got {kind!r}") from None


@register_notrace_function  # a data-dependent check: an FX leaf
def add_pos_embed(x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, C) + the (1, N, C) positional embedding; a clear error when N does not match."""
    if x.shape[1] != pos_embed.shape[1]:
        raise ValueError(f"input gives {x.shape[1]} tokens but the model was built for "
                         f"{pos_embed.shape[1]} (img_size); build it with the matching img_size")
    return x + pos_embed


class CCT(nn.Module):
    """CCT-L/kxn backbone: conv tokenizer, learned positional embedding, L pre-norm encoder layers.

    Args:
        img_size: square input size (sets the positional embedding's token count).
        embed_dim, depth, num_heads, mlp_ratio: the transformer's width, layers, heads, MLP ratio.
        kernel_size, num_conv_layers: the tokenizer's k and n.
        attn_drop_rate: attention dropout (0.1); drop_path_rate: stochastic depth, linear over layers.
        norm_eps: every LayerNorm's eps; 1e-5 (``nn.LayerNorm``'s default, as CCT and both research
            releases use; timm's ``Block`` would default to 1e-6).
        encoder_attention: ``"softmax"`` (real self-attention) or ``"identity"``
            (:class:`PassThroughAttention`, the released SG ablation's encoder).
    """

    def __init__(self, img_size: int = 32, in_chans: int = 3, embed_dim: int = 256, depth: int = 7,
                 num_heads: int = 4, mlp_ratio: float = 2.0, kernel_size: int = 3, num_conv_layers: int = 1,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.1, drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-5, encoder_attention: str = "softmax") -> None:
        super().__init__()
        self.embed_dim = self.num_features = embed_dim
        self.tokenizer = ConvTokenizer(in_chans, embed_dim, kernel_size, num_conv_layers)
        side = self.tokenizer.grid_size(img_size)
        self.grid_size = (side, side)
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # device: works under a meta context
        attn_cls = attention_layer(encoder_attention)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, attn_drop=attn_drop_rate,
                  norm_layer=partial(nn.LayerNorm, eps=norm_eps), drop_path=dpr[i]) for i in range(depth)])
        for block in self.blocks:
            # timm 1.0.16's Block takes no attention class: swap in the subclass, same parameters
            block.attn.__class__ = attn_cls
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.grad_checkpointing = False
        trunc_normal_(self.pos_embed, std=0.2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        init_transformer_weights(m)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens (B, N, C)."""
        x = self.pos_drop(add_pos_embed(self.tokenizer(x), self.pos_embed))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.norm(checkpoint_seq(self.blocks, x))
        return self.norm(self.blocks(x))

    forward = forward_features
