"""Face ViTs of the papers' official code (insightface / CVLFace layout), the ViT-FIQA variants, named presets
of every official configuration, and official checkpoint loading.

Layout follows insightface's ``vit.py`` (CVLFace's ViT is the same class): 112x112 input, patch 9 (12x12 =
144 tokens, the last 4 pixels unused) or 8 (14x14 = 196), no CLS token, learned position embedding,
pre-norm blocks with explicit ``(q @ k^T) * head_dim**-0.5`` attention, MLP Linear-ReLU6-Linear, final
LayerNorm, embedding head flatten(N*C) -> Linear -> BN1d -> Linear -> BN1d. Parameter names equal the
official ones, except the ViT-FIQA quality token (``quality_token`` here, ``qs_token`` officially;
:func:`load_official_state_dict` maps it).

ViT-FIQA variants (``quality``; the official ``vit_qs`` ``mode``):
  ``None``     plain recognition model, ``forward`` returns the embedding.
  ``"token"``  a learned quality token prepended (own position embedding); head_qs = BN1d(C) -> Linear(C,1)
               on the final-norm output of token 0; the embedding from the patch tokens.
               ``forward`` returns ``(embedding, quality[B,1])``.
  ``"crfiqa"`` no token; head_qs = BN1d(E) -> Linear(E,1) on the embedding. Returns ``(embedding, quality)``.
  ``"full"``   the quality token prepended, the embedding computed from all N+1 tokens, head_qs on the
               embedding. Returns ``(embedding, quality)``.

:func:`preset` builds every official configuration by name (:data:`PRESETS`): a head count carries no
weights, so a model built by hand with the wrong one loads an official checkpoint without error.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

SIZES = {
    # name: (embed_dim, depth, num_heads, mlp_ratio)
    "vit_t": (256, 12, 8, 4.0),
    "vit_s": (512, 12, 8, 4.0),
    "vit_b": (512, 24, 8, 4.0),
}


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int):
        super().__init__()
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class FaceViT(nn.Module):
    """Plain face recognition ViT: ``forward`` returns the embedding [B, num_features]."""

    num_prefix: int = 0

    def __init__(self, img_size: int = 112, patch_size: int = 9, embed_dim: int = 512, depth: int = 12,
                 num_heads: int = 8, mlp_ratio: float = 4.0, num_features: int = 512):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        n = self.patch_embed.num_patches
        self.num_patches = n
        self.pos_embed = nn.Parameter(torch.zeros(1, n + self.num_prefix, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * n, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=2e-5),
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def embed_patches(self, x):
        return self.patch_embed(x) + self.pos_embed

    def forward_tokens(self, x):
        """Final-norm output of the last block, [B, N(+1), C]."""
        x = self.embed_patches(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x):
        t = self.forward_tokens(x)
        return self.feature(t.flatten(1))


class ViTFIQA(FaceViT):
    """ViT-FIQA "token" variant: a learned quality token prepended; ``forward`` returns
    ``(embedding, quality[B,1])`` with quality = head_qs(final-norm token 0)."""

    num_prefix: int = 1

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        dim = self.pos_embed.shape[-1]
        self.quality_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.quality_token, std=0.02)
        self.head_qs = nn.Sequential(nn.BatchNorm1d(dim, eps=2e-5), nn.Linear(dim, 1, bias=False))

    def embed_patches(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.quality_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward(self, x):
        t = self.forward_tokens(x)
        emb = self.feature(t[:, 1:].flatten(1))
        return emb, self.head_qs(t[:, 0])


class CRFIQAViT(FaceViT):
    """ViT-FIQA "crfiqa" variant: no token; ``forward`` returns ``(embedding, head_qs(embedding))``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        feats = self.feature[-1].num_features
        self.head_qs = nn.Sequential(nn.BatchNorm1d(feats, eps=2e-5), nn.Linear(feats, 1, bias=False))

    def forward(self, x):
        emb = self.feature(self.forward_tokens(x).flatten(1))
        return emb, self.head_qs(emb)


class FullQualityViT(ViTFIQA):
    """ViT-FIQA "full" variant: the quality token prepended; the embedding is computed from all N+1
    final-norm tokens and head_qs reads the embedding. ``forward`` returns ``(embedding, quality[B,1])``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        dim, feats = self.pos_embed.shape[-1], self.feature[-1].num_features
        self.feature[0] = nn.Linear(dim * (self.num_patches + 1), dim, bias=False)
        nn.init.trunc_normal_(self.feature[0].weight, std=0.02)
        self.head_qs = nn.Sequential(nn.BatchNorm1d(feats, eps=2e-5), nn.Linear(feats, 1, bias=False))

    def forward(self, x):
        emb = self.feature(self.forward_tokens(x).flatten(1))
        return emb, self.head_qs(emb)


def face_vit(size: str = "vit_s", patch_size: int = 9, img_size: int = 112, quality: Optional[str] = None,
             **kwargs) -> FaceViT:
    """vit_t / vit_s / vit_b face ViT (patch 9 at 112x112 like insightface; patch 8 for CVLFace-style)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    dim, depth, heads, mlp = SIZES[size]
    cfg = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp, img_size=img_size, patch_size=patch_size)
    cfg.update(kwargs)
    return model_class(quality)(**cfg)


def model_class(quality: Optional[str]) -> type:
    """The class for a ViT-FIQA variant: None (plain), "token", "crfiqa" or "full"."""
    classes = {None: FaceViT, "token": ViTFIQA, "crfiqa": CRFIQAViT, "full": FullQualityViT}
    if quality not in classes:
        raise ValueError(f"quality must be None, 'token', 'crfiqa' or 'full', got {quality!r}")
    return classes[quality]


@dataclass(frozen=True)
class Preset:
    """One official configuration: the class and constructor arguments, and where they come from."""

    name: str
    quality: Optional[str]
    config: dict
    used_by: str
    source: str


_VITFIQA = dict(patch_size=9, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0, num_features=512)
_VITFIQA_SOURCE = ("ViT-FIQA evaluation/QualityModel.py and EX-FIQA evaluation/QualityModel.py: vit_qs "
                   "img 112, patch 9, 512 wide, 12 blocks, 8 heads, mlp 4, embedding 512 (= width)")
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cvlface_vit_s", None, dict(patch_size=8, embed_dim=512, depth=12, num_heads=8, mlp_ratio=5.0),
           "ATTN-FIQA (official run: ViT-S, AdaFace WebFace4M)",
           "CVLFace models/vit 'small' (= ATTN-FIQA / ViTNT-FIQA 'vits'): patch 8, 512, 12 blocks, 8 heads, mlp 5"),
    Preset("cvlface_vit_b", None, dict(patch_size=8, embed_dim=512, depth=24, num_heads=16, mlp_ratio=3.0),
           "ViTNT-FIQA (official run: ViT-B, AdaFace WebFace4M)",
           "CVLFace models/vit 'base' (= ATTN-FIQA / ViTNT-FIQA 'vitb'): patch 8, 512, 24 blocks, 16 heads, mlp 3"),
    Preset("insightface_vit_t", None, dict(patch_size=9, embed_dim=256, depth=12, num_heads=8, mlp_ratio=4.0),
           "insightface arcface_torch vit_t", "insightface backbones: patch 9, 256, 12 blocks, 8 heads, mlp 4"),
    Preset("insightface_vit_s", None, dict(patch_size=9, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0),
           "insightface arcface_torch vit_s", "insightface backbones: patch 9, 512, 12 blocks, 8 heads, mlp 4"),
    Preset("insightface_vit_b", None, dict(patch_size=9, embed_dim=512, depth=24, num_heads=8, mlp_ratio=4.0),
           "insightface arcface_torch vit_b", "insightface backbones: patch 9, 512, 24 blocks, 8 heads, mlp 4"),
    Preset("vitfiqa_token", "token", _VITFIQA, "ViT-FIQA (T) and EX-FIQA (T): vitfiqa_token.pt", _VITFIQA_SOURCE),
    Preset("vitfiqa_crfiqa", "crfiqa", _VITFIQA, "ViT-FIQA (C) and EX-FIQA (C): vitfiqa_crfiqa.pt", _VITFIQA_SOURCE),
    Preset("vitfiqa_full", "full", _VITFIQA, "ViT-FIQA / EX-FIQA 'full' mode: vitfiqa_full.pt", _VITFIQA_SOURCE),
)}


def preset(name: str, **overrides) -> FaceViT:
    """A model in one official configuration (eval mode), e.g. ``preset("cvlface_vit_b")``; see
    :data:`PRESETS`. ``overrides`` change constructor arguments (e.g. ``num_features``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[name]
    return model_class(p.quality)(**{**p.config, **overrides}).eval()


# Official names that differ from ours, and parameters only training uses (insightface / CVLFace / vit_qs
# `mask_token` fills masked positions when training with mask_ratio > 0; eval never reads it).
OFFICIAL_RENAMES = {"qs_token": "quality_token"}
TRAINING_ONLY_KEYS = ("mask_token",)
# Containers that nest the weights: insightface/ViT-FIQA training checkpoints (state_dict_backbone), CVLFace
# and others (state_dict, model); and wrapper prefixes on every key (DataParallel module., CVLFace net.).
_NESTING_KEYS = ("state_dict_backbone", "state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "net.", "backbone.", "model.")


@dataclass
class LoadReport:
    """What :func:`load_official_state_dict` did to fit a checkpoint to the model."""

    unwrapped: list = field(default_factory=list)   # nesting keys descended, outermost first
    stripped: list = field(default_factory=list)    # wrapper prefixes removed from every key
    renamed: dict = field(default_factory=dict)     # official name -> ours
    dropped: list = field(default_factory=list)     # training-only keys left out


def _shapes(module: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _preset_shapes(name: str) -> dict:
    p = PRESETS[name]
    with torch.device("meta"):  # shapes only: no memory
        return _shapes(model_class(p.quality)(**p.config))


def _fitting_presets(shapes: dict) -> list[str]:
    return [name for name in PRESETS if _preset_shapes(name) == shapes]


def _num_heads(model: nn.Module) -> Optional[int]:
    blocks = getattr(model, "blocks", None)
    try:
        return int(blocks[0].attn.num_heads)
    except (TypeError, AttributeError, IndexError):
        return None


def load_official_state_dict(model: nn.Module | str, state, *, report: bool = False):
    """Load an official checkpoint (path, or a loaded dict) into ``model`` (a module, or a :data:`PRESETS`
    name to build); returns the model (and a :class:`LoadReport` with ``report=True``).

    Generic unwrapping, reported in the log: weights nested under ``state_dict_backbone`` / ``state_dict``
    / ``model`` are taken out; a wrapper prefix on EVERY key (``module.``, ``net.``, ``backbone.``,
    ``model.``) is removed (a prefix only some keys carry is left alone, so e.g. a classifier head saved
    beside a backbone stays a separate, unexpected key); ``qs_token`` becomes ``quality_token``;
    training-only keys (``mask_token``) are dropped. Then keys and shapes are checked strictly: one error
    lists missing, unexpected and mis-shaped keys and names the presets whose shapes the checkpoint fits.
    A head count has no weights: when the shapes fit a preset with another head count than the model's, a
    warning says so. Files are read with ``torch.load(weights_only=True)``."""
    import logging
    import warnings

    if isinstance(model, str):
        model = preset(model)
    if not isinstance(state, dict):
        state = torch.load(state, map_location="cpu", weights_only=True)
    rep = LoadReport()
    while not all(isinstance(v, torch.Tensor) for v in state.values()):
        key = next((k for k in _NESTING_KEYS if isinstance(state.get(k), dict)), None)
        if key is None:
            others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
            raise ValueError(f"checkpoint holds non-tensor entries {others[:10]} and none of "
                             f"{list(_NESTING_KEYS)} to descend into")
        state, rep.unwrapped = state[key], rep.unwrapped + [key]
    own = model.state_dict()
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)
                       and not any(k.startswith(p) for k in own)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        rep.stripped.append(prefix)
    cleaned = {}
    for k, v in state.items():
        if k in OFFICIAL_RENAMES and k not in own and OFFICIAL_RENAMES[k] in own:
            rep.renamed[k] = OFFICIAL_RENAMES[k]
            k = OFFICIAL_RENAMES[k]
        elif k in TRAINING_ONLY_KEYS and k not in own:
            rep.dropped.append(k)
            continue
        cleaned[k] = v
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    shape = sorted(k for k in set(own) & set(cleaned) if own[k].shape != cleaned[k].shape)
    # Which presets the checkpoint fits, in our names whatever the model asked for has.
    fits = _fitting_presets({OFFICIAL_RENAMES.get(k, k): tuple(v.shape) for k, v in state.items()
                             if k not in TRAINING_ONLY_KEYS})
    if missing or unexpected or shape:
        hint = (f"; the checkpoint's shapes fit preset {' / '.join(repr(f) for f in fits)}: "
                f"vitfiqa.models.preset({fits[0]!r})" if fits else
                "; its shapes fit none of the presets")
        raise ValueError("checkpoint does not match the model: "
                         f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                         f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}, "
                         f"shape mismatch {shape[:10]}{hint}")
    heads = _num_heads(model)
    preset_heads = {PRESETS[f].config["num_heads"] for f in fits}
    if heads is not None and preset_heads and heads not in preset_heads:
        warnings.warn(f"the checkpoint's shapes fit preset {fits[0]!r} with {sorted(preset_heads)} attention heads, "
                      f"but the model has {heads}: a head count carries no weights, so the embeddings would be "
                      f"wrong silently; build the model with vitfiqa.models.preset({fits[0]!r})", stacklevel=2)
    model.load_state_dict(cleaned)
    logging.getLogger("vitfiqa").info("checkpoint loaded: nested under %s, prefixes removed %s, renamed %s, "
                                      "training-only keys dropped %s", rep.unwrapped, rep.stripped, rep.renamed,
                                      rep.dropped)
    return (model, rep) if report else model


# The input contract (check, read, export with it) lives in vitfiqa.contract, below the API, the recogniser
# and this module, which all read it; re-exported here, where the models are built and exported.
from .contract import (INPUT_CONTRACT_FILE, check_input_contract, export_torchscript,  # noqa: E402,F401
                       read_input_contract)

# The CNN recognizers of the papers (insightface iResNet, MagFace, CurricularFace IR) live in fr_models.
from .fr_models import (RECOGNIZERS, IRBackbone, IResNet, build_recognizer, export_recognizer,  # noqa: E402,F401
                        ir_backbone, iresnet, recognizer_state_dict)

