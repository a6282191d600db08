"""SDD-FIQA (Ou et al., CVPR 2021): the output of its quality regression network (preset ``sddfiqa``: face.evoLVe
IR-50 body, head Flatten - PReLU(25088) - Dropout(0.5) - Linear(25088, 1); checkpoint keys ``module.``-prefixed;
RGB, (x/255-0.5)/0.5)."""
from __future__ import annotations

import torch

from .registry import BaselineMethod, register


def compute(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    if "quality" not in model.module_names() or "body" not in model.module_names():
        raise ValueError(f"SDD-FIQA needs the SDD-FIQA network (preset sddfiqa); {model.name} is not one")
    with torch.no_grad():
        return {"sddfiqa": model.quality(x).double()}


METHOD = register(BaselineMethod(
    "sddfiqa", "SDD-FIQA", (("sddfiqa", "SDD-FIQA"),), compute, default_preset="sddfiqa",
    accepts="the SDD-FIQA network (preset sddfiqa or its TorchScript)", description="the regression output"))
