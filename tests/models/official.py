"""Test models with the structure of the papers' official ViT classes, written here from their published
layouts (module names, parameter shapes, forward data flow), not copied:

- ``InsightfaceViT``: insightface ``vit.py`` / CVLFace ``vit.py`` (the CVLFace ViT is the same class at patch 8):
  no CLS token, learned position embedding, stochastic depth, optional training-only ``mask_token``, and a
  forward that ends ``self.norm(x.float())`` -> reshape(B, N*C) -> feature head.
- ``NoNormForwardViT``: the ATTN-FIQA / ViTNT-FIQA repositories' own ``vit.py``: blocks return
  ``(x, attention)``, and ``forward`` leaves the final norm out (``x.to(torch.float32)`` -> reshape -> head),
  although the module still owns ``self.norm`` (their ViTNT score applies it).
- ``QualityTokenViT``: the ViT-FIQA / EX-FIQA ``vit_qs`` class in its three modes: ``token`` (``qs_token``
  prepended, head_qs on the final-norm token 0), ``crfiqa`` (no token, head_qs on the embedding) and ``full``
  (``qs_token`` prepended, the embedding is computed from all N+1 tokens, head_qs on the embedding).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .timm_style import PatchEmbed  # the same conv patch embedding (patch_embed.proj)


class DropPath(nn.Module):
    """Stochastic depth: identity in eval mode (a `training` branch in the graph, as timm's)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, return_logits: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.return_logits = return_logits

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-2, -1)) * self.scale
        probs = self.attn_drop(logits.softmax(dim=-1))
        out = self.proj_drop(self.proj((probs @ v).transpose(1, 2).reshape(b, n, c)))
        return out, logits


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, returns_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.returns_attention = returns_attention

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        a, logits = self.attn(self.norm1(x))
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, logits


class PlainBlock(Block):
    """A block whose forward returns only the tokens (insightface / CVLFace / vit_qs)."""

    def __init__(self, *args):
        super().__init__(*args, returns_attention=False)

    def forward(self, x):  # type: ignore[override]
        a, _ = self.attn(self.norm1(x))
        x = x + self.drop_path(a)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init(model: nn.Module):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _Base(nn.Module):
    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_features, mask_ratio,
                 drop_path_rate, prefix_tokens, block_cls, head_reads_prefix=False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.embed_dim = embed_dim
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace(0, rate, depth)
        if block_cls is PlainBlock:
            self.blocks = nn.ModuleList([PlainBlock(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        else:
            self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, r, True) for r in rates])
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = num_features
        # The embedding head flatten -> Linear -> BN -> Linear -> BN, over the patch tokens (and the quality
        # token too in vit_qs's "full" mode).
        head_in = embed_dim * (self.num_patches + (prefix_tokens if head_reads_prefix else 0))
        self.feature = nn.Sequential(
            nn.Linear(head_in, embed_dim, bias=False), nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, num_features, bias=False), nn.BatchNorm1d(num_features, eps=2e-5))
        if mask_ratio > 0:  # training-only: fills masked positions during training; unused in eval
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        _init(self)


class InsightfaceViT(_Base):
    def __init__(self, img_size=112, patch_size=9, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0,
                 num_features=512, mask_ratio=0.1, drop_path_rate=0.1):
        super().__init__(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_features, mask_ratio,
                         drop_path_rate, 0, PlainBlock)

    def forward(self, x):
        b = x.shape[0]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x.float())
        return self.feature(torch.reshape(x, (b, self.num_patches * self.embed_dim)))


class NoNormForwardViT(_Base):
    def __init__(self, img_size=112, patch_size=8, embed_dim=512, depth=12, num_heads=8, mlp_ratio=5.0,
                 num_features=512, mask_ratio=0.0, drop_path_rate=0.1):
        super().__init__(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_features, mask_ratio,
                         drop_path_rate, 0, Block)

    def forward(self, x):
        b = x.shape[0]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x, _ = blk(x)
        x = x.to(torch.float32)
        return self.feature(torch.reshape(x, (b, self.num_patches * self.embed_dim)))


class QualityTokenViT(_Base):
    def __init__(self, img_size=112, patch_size=9, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0,
                 num_features=512, mask_ratio=0.1, drop_path_rate=0.1, mode="token"):
        if mode not in ("token", "crfiqa", "full"):
            raise ValueError(mode)
        prefix = 0 if mode == "crfiqa" else 1
        # vit_qs's embedding is embed_dim wide whatever num_features says
        super().__init__(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, embed_dim, mask_ratio,
                         drop_path_rate, prefix, PlainBlock, head_reads_prefix=mode == "full")
        self.mode = mode
        if prefix:
            self.qs_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.normal_(self.qs_token, std=0.02)
        self.head_qs = nn.Sequential(nn.BatchNorm1d(embed_dim, eps=2e-5), nn.Linear(embed_dim, 1, bias=False))

    def forward(self, x):
        b = x.shape[0]
        x = self.patch_embed(x)
        if hasattr(self, "qs_token"):  # vit_qs: `if self.mode != "crfiqa"` (scriptable form)
            x = torch.cat((self.qs_token.expand(b, -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x.float())
        if self.mode == "token":
            emb = self.feature(torch.reshape(x[:, 1:], (b, self.num_patches * self.embed_dim)))
            return emb, self.head_qs(torch.reshape(x[:, 0], (b, self.embed_dim)))
        emb = self.feature(torch.reshape(x, (b, -1)))
        return emb, self.head_qs(emb)
