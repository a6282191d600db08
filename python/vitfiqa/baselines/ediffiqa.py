"""eDifFIQA (Babnik et al., T-BIOM 2024): the output of its MLP head (512-1024-1, exact GELU) on the embedding of
its backbone: eDifFIQA(T) = MobileFaceNet, whose embedding is L2-normalised (preset ``ediffiqa_t``); (S)/(M)/(L) =
iResNet-18/50/100 (``ediffiqa_s`` / ``_m`` / ``_l``). RGB, (x/255-0.5)/0.5."""
from __future__ import annotations

import torch

from .registry import BaselineMethod, register


def compute(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    names = model.module_names()
    if "mlp" not in names or "base_model" not in names:
        raise ValueError(f"eDifFIQA needs an eDifFIQA network (base_model + mlp, presets ediffiqa_t/s/m/l); "
                         f"{model.name} is not one")
    with torch.no_grad():
        return {"ediffiqa": model.quality(x).double()}


METHOD = register(BaselineMethod(
    "ediffiqa", "eDifFIQA", (("ediffiqa", "eDifFIQA"),), compute, default_preset="ediffiqa_t",
    accepts="an eDifFIQA network (presets ediffiqa_t/s/m/l or their TorchScript)", description="the MLP's output"))
