"""CR-FIQA (Boutros et al., CVPR 2023): the raw output of the ``qs`` head (``Linear(512, 1)`` on the affine
embedding BatchNorm1d) of CR-FIQA(S) / CR-FIQA(L) (presets ``crfiqa_s`` / ``crfiqa_l``: iResNet-50 / -100, bare
checkpoint keys), on the image as given (the official quality is not flip-averaged)."""
from __future__ import annotations

import torch

from .registry import BaselineMethod, register


def compute(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    if "qs" not in model.module_names():
        raise ValueError(f"CR-FIQA needs a CR-FIQA network (a 'qs' quality head, presets crfiqa_s / crfiqa_l); "
                         f"{model.name} has none")
    with torch.no_grad():
        return {"crfiqa": model.quality(x).double()}


METHOD = register(BaselineMethod(
    "crfiqa", "CR-FIQA", (("crfiqa", "CR-FIQA"),), compute, default_preset="crfiqa_l",
    accepts="a CR-FIQA network: forward returns (embedding, qs)", description="the qs head's raw output"))
