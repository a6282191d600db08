"""GraFIQs (Kolf et al., CVPRW 2024): gradient magnitudes of the batch-normalisation statistics discrepancy.

For ONE image: a forward hook on every ``BatchNorm2d`` takes its input's per-channel mean and biased variance;
the loss is the mean over those layers of MSE(mean, running_mean) + MSE(variance, running_var); its gradients
are taken with respect to activations (jankolf/GraFIQs ``extract_grafiqs.py``: the normalised input image and
the outputs of blocks 1 to 4, i.e. the four stages), not parameters. The quality of each group is the absolute
sum of its gradient; a lower sum means a better image, so the columns (higher = better, as for every method)
hold its negative:

``grafiqs``
    block 2, the paper's headline (the same values as ``grafiqs_block2``).
``grafiqs_image``, ``grafiqs_block1`` ... ``grafiqs_block4``
    the other groups.

The statistics and the loss are per image (a batch is scored as the sum of per-image losses, whose gradient
with respect to one image's activations is that image's own), so the score does not depend on the batch. The
network runs in eval mode. Stages: ``layer1``-``layer4`` of an iResNet, the resolution stages of an IR body;
``blocks=`` names other modules.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import BaselineMethod, register

GROUPS = ("image", "block1", "block2", "block3", "block4")
CHUNK = 8  # images per backward pass


def compute(model, x: torch.Tensor, blocks=None) -> dict[str, torch.Tensor]:
    from .nets import structure

    net = model.eager
    mods = dict(net.named_modules())
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise ValueError(f"GraFIQs needs a network with BatchNorm2d layers; {model.name} has none")
    if any(m.running_mean is None or m.running_var is None for m in bns):
        raise ValueError("GraFIQs needs the BatchNorm2d layers' running statistics (track_running_stats)")
    if blocks is None:
        try:
            blocks = structure(net).stages
        except ValueError as exc:
            raise ValueError(f"GraFIQs: {exc}; name the four stage modules with blocks=[...]") from None
        if not blocks:
            raise ValueError(f"GraFIQs: blocks 1 to 4 are defined for iResNet and IR networks; for {model.name} name "
                             "the four stage modules with blocks=[...]")
    blocks = list(blocks)
    if len(blocks) != 4 or not all(isinstance(b, str) and b in mods for b in blocks):
        raise ValueError(f"GraFIQs needs four stage modules of the network (blocks=[...] module paths); got {blocks}")
    if net.training:
        net.eval()
    if x.shape[0] > CHUNK:  # per-image values: chunks bound the activations kept for the backward pass
        parts = [compute(model, x[s:s + CHUNK], blocks) for s in range(0, x.shape[0], CHUNK)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    terms: list[torch.Tensor] = []
    stage_out: dict[str, torch.Tensor] = {}

    def bn_hook(m, args, out):
        a = args[0]
        mean = a.mean(dim=(2, 3))
        var = a.var(dim=(2, 3), unbiased=False)
        terms.append(((mean - m.running_mean) ** 2).mean(dim=1) + ((var - m.running_var) ** 2).mean(dim=1))

    handles = [m.register_forward_hook(bn_hook) for m in bns]
    handles += [mods[b].register_forward_hook(lambda m, a, out, b=b: stage_out.__setitem__(b, out)) for b in blocks]
    try:
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            net(xi)
            if len(stage_out) != 4:
                raise ValueError(f"GraFIQs: the forward did not run the modules {sorted(set(blocks) - set(stage_out))}")
            loss = torch.stack(terms).mean(dim=0)  # [B]: the mean over layers, per image
            grads = torch.autograd.grad(loss.sum(), [xi] + [stage_out[b] for b in blocks])
    finally:
        for h in handles:
            h.remove()
    cols = {f"grafiqs_{g}": -grad.detach().abs().double().flatten(1).sum(dim=1) for g, grad in zip(GROUPS, grads)}
    return {"grafiqs": cols["grafiqs_block2"], **cols}


METHOD = register(BaselineMethod(
    "grafiqs", "GraFIQs",
    (("grafiqs", "GraFIQs"),) + tuple((f"grafiqs_{g}", f"GraFIQs ({g})") for g in GROUPS), compute,
    options={"blocks": None}, default_preset="grafiqs_r100",
    accepts="an eager recogniser with BatchNorm2d (presets; TorchScript files of a known layout are rebuilt eagerly)",
    description="negated absolute sum of the BN-statistics loss gradient"))
