"""MagFace (Meng et al., CVPR 2021): the quality is the L2 norm of the recogniser's unnormalised embedding; its
paper's recogniser is MagFace's iResNet-100 (preset ``magface_r100``: BatchNorm eps 2e-5, affine embedding
BatchNorm1d, input x/255 with no mean subtraction)."""
from __future__ import annotations

import torch

from .registry import BaselineMethod, register


def compute(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        e = model.embedding(x)
    return {"magface": torch.linalg.vector_norm(e.double(), dim=1)}


METHOD = register(BaselineMethod(
    "magface", "MagFace", (("magface", "MagFace"),), compute, default_preset="magface_r100",
    accepts="any recogniser (the norm of its first output / the preset's embedding)",
    description="L2 norm of the unnormalised embedding"))
