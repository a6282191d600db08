"""A timm-style ViT for tests: CLS token, fused F.scaled_dot_product_attention (or, with fused_attn=False,
timm's explicit `(q * scale) @ k^T` path), nn.Sequential blocks, an optional ``attn_mask`` forwarded through
the blocks (as timm's newer ViTs do), an optional learned relative-position bias added to the logits (as in
timm's relpos ViTs and BEiT), GELU MLP, final norm."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RelPosBias(nn.Module):
    """A learned [H,N,N] table added to the attention logits (a stand-in for a relative-position bias)."""

    def __init__(self, num_heads: int, num_tokens: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_heads, num_tokens, num_tokens))

    def forward(self):
        return self.table.unsqueeze(0)


class Attention(nn.Module):
    __constants__ = ["fused_attn"]  # a scripting constant, as in timm: the untaken path is compiled away

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, fused_attn: bool = True,
                 rel_pos_tokens: int = 0):
        super().__init__()
        self.fused_attn = fused_attn
        self.rel_pos = RelPosBias(num_heads, rel_pos_tokens) if rel_pos_tokens else None
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask: Optional[torch.Tensor] = None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = attn_mask
        if self.rel_pos is not None:
            bias = self.rel_pos() if bias is None else bias + self.rel_pos()
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, fused_attn: bool = True,
                 rel_pos_tokens: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm, fused_attn, rel_pos_tokens)
        self.ls1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)
        self.ls2 = nn.Identity()

    def forward(self, x, attn_mask: Optional[torch.Tensor] = None):
        x = x + self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmStyleViT(nn.Module):
    def __init__(self, img_size: int = 32, patch_size: int = 8, dim: int = 48, depth: int = 4, num_heads: int = 3,
                 num_classes: int = 10, qk_norm: bool = False, fused_attn: bool = True, rel_pos: bool = False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, dim) * 0.02)
        self.num_prefix = 1
        tokens = self.patch_embed.num_patches + 1 if rel_pos else 0
        self.blocks = nn.Sequential(*[Block(dim, num_heads, qk_norm, fused_attn, tokens) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x, attn_mask: Optional[torch.Tensor] = None):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        if attn_mask is not None:
            for blk in self.blocks:
                x = blk(x, attn_mask=attn_mask)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward(self, x, attn_mask: Optional[torch.Tensor] = None):
        x = self.forward_features(x, attn_mask)
        return self.head(x[:, 0])
