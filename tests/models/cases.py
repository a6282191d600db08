"""The model families the method tests run on, and how test models are perturbed and exported."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from vitfiqa.models import CRFIQAViT, FaceViT, ViTFIQA

from .timm_style import TimmStyleViT


def spread(model: torch.nn.Module, std: float = 0.15, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so logits and tokens are far from the degenerate near-zero init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


@dataclass
class ModelCase:
    name: str
    eager: torch.nn.Module
    path: str
    image_size: int
    prefix: int
    grid: tuple
    variant: str | None = None  # EX-FIQA variant for quality models: "T" or "C"

    def images(self, batch: int = 3, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.image_size, self.image_size, generator=g)


FAMILIES = {
    # name: (factory, image size, prefix tokens, grid, EX-FIQA variant)
    "insightface": (lambda: FaceViT(embed_dim=48, depth=3, num_heads=4, num_features=32), 112, 0, (12, 12), None),
    "cvlface": (lambda: FaceViT(patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0,
                                num_features=32), 112, 0, (14, 14), None),
    "vitfiqa_token": (lambda: ViTFIQA(embed_dim=48, depth=4, num_heads=4, num_features=32), 112, 1, (12, 12), "T"),
    "vitfiqa_crfiqa": (lambda: CRFIQAViT(embed_dim=48, depth=3, num_heads=4, num_features=32), 112, 0, (12, 12), "C"),
    "timm": (lambda: TimmStyleViT(img_size=32, patch_size=8, dim=48, depth=4, num_heads=3), 32, 1, (4, 4), None),
    "timm_qknorm": (lambda: TimmStyleViT(img_size=32, patch_size=8, dim=48, depth=3, num_heads=3, qk_norm=True),
                    32, 1, (4, 4), None),
    # timm with fused attention off: traced, `self.scale` becomes one 0-dim constant made in blocks.0.attn
    "timm_explicit": (lambda: TimmStyleViT(img_size=32, patch_size=8, dim=48, depth=3, num_heads=3, fused_attn=False),
                      32, 1, (4, 4), None),
    # a relative-position bias added to the logits: ATTN-FIQA's default leaves it out (tests/test_compat_bias.py)
    "timm_relpos": (lambda: TimmStyleViT(img_size=32, patch_size=8, dim=48, depth=3, num_heads=3, rel_pos=True),
                    32, 1, (4, 4), None),
    "timm_relpos_explicit": (lambda: TimmStyleViT(img_size=32, patch_size=8, dim=48, depth=3, num_heads=3,
                                                  rel_pos=True, fused_attn=False), 32, 1, (4, 4), None),
}


def export(model: torch.nn.Module, how: str, example: torch.Tensor, path: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, example)
    ts.save(path)
    return path
