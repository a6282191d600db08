"""The networks of the baseline FIQA methods, written from the official repositories' published layouts (module
names, parameter shapes, forward data flow), so their released checkpoints load strictly; and the structural
facts the baselines read from any recogniser (where its embedding layer is, where its stages end).

- CR-FIQA (fdbtrs/CR-FIQA ``backbones/iresnet.py``): the insightface iResNet (BatchNorm eps 1e-5, affine
  ``features`` BatchNorm1d) whose embedding feeds ``qs = Linear(512, 1)``; ``forward`` returns
  ``(embedding, qs)``. Checkpoint ``<N>backbone.pth``: bare keys.
- SDD-FIQA (Tencent/TFace ``quality/``): face.evoLVe IR-50 (``input_layer``, ``body`` of bottleneck_IR units,
  BatchNorm eps 1e-5) with ``quality = Sequential(Flatten, PReLU(25088), Dropout(0.5), Linear(25088, 1))``;
  ``forward`` returns the quality [B, 1]. Checkpoint keys prefixed ``module.``.
- eDifFIQA (LSIbabnikz/eDifFIQA): ``base_model`` (T: MobileFaceNet, whose forward L2-normalises its embedding;
  S/M/L: insightface iResNet-18/50/100, unnormalised) and ``mlp`` (``l1`` Linear(512, 1024), exact GELU ``ac``,
  ``l2`` Linear(1024, 1)); ``forward`` returns the quality [B, 1]. Checkpoint: the model's state dict, keys
  ``base_model.*`` and ``mlp.*``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..fr_models import IR_UNITS, IRESNET_LAYERS, BottleneckIR, IRBackbone, IResNet


class CRFIQAIResNet(IResNet):
    """CR-FIQA's iResNet: the insightface iResNet plus ``qs``; ``forward`` returns ``(embedding, quality)``."""

    def __init__(self, layers=(3, 4, 14, 3), num_features: int = 512, eps: float = 1e-5):
        super().__init__(layers, num_features=num_features, eps=eps)
        self.qs = nn.Linear(num_features, 1)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        emb = self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))
        return emb, self.qs(emb)


class _Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class SDDFIQANet(nn.Module):
    """SDD-FIQA's quality network (face.evoLVe IR body, ``use_type="Qua"``): ``forward`` returns [B, 1]."""

    def __init__(self, units=(3, 4, 14, 3)):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        body, cin = [], 64
        for width, n in zip((64, 128, 256, 512), units):
            body += [BottleneckIR(cin, width, 2)] + [BottleneckIR(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*body)
        self.quality = nn.Sequential(_Flatten(), nn.PReLU(512 * 7 * 7), nn.Dropout(0.5), nn.Linear(512 * 7 * 7, 1))

    def forward(self, x):
        return self.quality(self.body(self.input_layer(x)))


class _ConvBlock(nn.Module):
    """conv (no bias) -> BatchNorm2d -> PReLU (``prelu=False``: the official ``Linear_block``, no PReLU)."""

    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1, prelu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if prelu:
            self.prelu = nn.PReLU(cout)
        self.act = prelu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.act else x


class _DepthWise(nn.Module):
    """1x1 expand to ``groups`` channels, depthwise 3x3 (stride), 1x1 project; optional identity shortcut."""

    def __init__(self, cin, cout, groups, stride=2, residual=False):
        super().__init__()
        self.conv = _ConvBlock(cin, groups)
        self.conv_dw = _ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = _ConvBlock(groups, cout, prelu=False)
        self.residual = residual

    def forward(self, x):
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class _Residual(nn.Module):
    def __init__(self, c, n, groups):
        super().__init__()
        self.model = nn.Sequential(*[_DepthWise(c, c, groups, 1, residual=True) for _ in range(n)])

    def forward(self, x):
        return self.model(x)


class MobileFaceNet(nn.Module):
    """The MobileFaceNet of eDifFIQA(T) (``model/mobilenet.py``) for 112x112 input; ``forward`` returns the
    L2-normalised 512-d embedding."""

    def __init__(self, embedding_size: int = 512):
        super().__init__()
        self.conv1 = _ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = _ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = _DepthWise(64, 64, 128)
        self.conv_3 = _Residual(64, 4, 128)
        self.conv_34 = _DepthWise(64, 128, 256)
        self.conv_4 = _Residual(128, 6, 256)
        self.conv_45 = _DepthWise(128, 128, 512)
        self.conv_5 = _Residual(128, 2, 256)
        self.conv_6_sep = _ConvBlock(128, 512)
        self.conv_6_dw = _ConvBlock(512, 512, 7, 1, 0, groups=512, prelu=False)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x):
        for name in ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5",
                     "conv_6_sep", "conv_6_dw"):
            x = getattr(self, name)(x)
        return F.normalize(self.bn(self.linear(x.reshape(x.shape[0], -1))), dim=1)


class _MLP(nn.Module):
    def __init__(self, din=512, hidden=1024, dout=1):
        super().__init__()
        self.l1 = nn.Linear(din, hidden)
        self.ac = nn.GELU()  # exact (erf) GELU, torch's default, as the official MLP
        self.l2 = nn.Linear(hidden, dout)

    def forward(self, x):
        return self.l2(self.ac(self.l1(x)))


class EDifFIQANet(nn.Module):
    """eDifFIQA: ``base_model`` (embedding) -> ``mlp`` -> quality [B, 1]."""

    def __init__(self, base_model: nn.Module):
        super().__init__()
        self.base_model = base_model
        self.mlp = _MLP()

    def forward(self, x):
        return self.mlp(self.base_model(x))


# -- structure: the embedding layer (SER-FIQ) and the stages (GraFIQs) of a recogniser -----------------------------

@dataclass(frozen=True)
class Structure:
    """What the baselines read from a network: ``embedding_layer``, the module path of the Linear that maps the
    flattened final feature map to the embedding; ``after``, the modules applied to its output up to the
    embedding, in order; ``normalized``, whether the forward L2-normalises the embedding after them;
    ``stages``, the module paths whose outputs are "blocks 1 to 4"; ``family``, a name for messages."""

    family: str
    embedding_layer: Optional[str]
    after: tuple[str, ...] = ()
    normalized: bool = False
    stages: tuple[str, ...] = ()


def _stage_ends(body: nn.Sequential, prefix: str) -> tuple[str, ...]:
    """Paths of the last unit of each resolution stage of a sequence of bottleneck_IR units (a stage starts at a
    unit whose 3x3 convolution strides)."""
    units = list(body)

    def strides(unit) -> bool:
        conv = unit.res_layer[3] if isinstance(getattr(unit, "res_layer", None), nn.Sequential) else None
        return conv is not None and tuple(conv.stride) != (1, 1)

    return tuple(f"{prefix}.{i}" for i in range(len(units)) if i + 1 == len(units) or strides(units[i + 1]))


def structure(model: nn.Module) -> Structure:
    """The :class:`Structure` of a network of a known layout: the insightface / MagFace / CR-FIQA iResNet, the
    CurricularFace / face.evoLVe IR (and SDD-FIQA's IR-50), eDifFIQA's MobileFaceNet and iResNet, the face ViTs of
    :mod:`vitfiqa.models`; found by module names and types, so an eager copy of another implementation with the
    official names is recognised too."""
    mods = dict(model.named_modules())
    for prefix in ("", "base_model."):
        p = prefix
        if all(f"{p}{n}" in mods for n in ("conv1", "layer1", "layer2", "layer3", "layer4", "bn2", "fc", "features")):
            return Structure("iresnet", f"{p}fc", (f"{p}features",), False,
                             tuple(f"{p}layer{i}" for i in range(1, 5)))
        if all(f"{p}{n}" in mods for n in ("conv1", "conv_6_dw", "linear", "bn")) and \
                isinstance(mods[f"{p}linear"], nn.Linear):
            return Structure("mobilefacenet", f"{p}linear", (f"{p}bn",), True, ())  # no "blocks 1-4" defined
    if "input_layer" in mods and isinstance(mods.get("body"), nn.Sequential):
        stages = _stage_ends(mods["body"], "body")
        out = mods.get("output_layer")
        if isinstance(out, nn.Sequential) and len(out) == 5 and isinstance(out[3], nn.Linear):
            return Structure("ir", "output_layer.3", ("output_layer.4",), False, stages)
        return Structure("ir", None, (), False, stages)  # SDD-FIQA: a quality head, no embedding
    feat = mods.get("feature")
    if isinstance(feat, nn.Sequential) and "blocks" in mods and isinstance(feat[0], nn.Linear):
        return Structure("vit", "feature.0", tuple(f"feature.{i}" for i in range(1, len(feat))), False, ())
    raise ValueError(f"{type(model).__name__}: not a network layout the baselines know (insightface/MagFace/CR-FIQA "
                     "iResNet, CurricularFace/face.evoLVe IR, MobileFaceNet, vitfiqa face ViT)")


# -- TorchScript files -> eager modules ----------------------------------------------------------------------------

def _count_units(keys, pattern: str) -> dict[int, int]:
    found: dict[int, set] = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {g: len(v) for g, v in found.items()}


def _iresnet_layers(keys, prefix: str = "") -> tuple[int, ...]:
    counts = _count_units(keys, re.escape(prefix) + r"layer(\d)\.(\d+)\.bn1\.weight$")
    return tuple(counts.get(i, 0) for i in range(1, 5))


def _ir_units(keys) -> tuple[int, ...]:
    n = len({int(m.group(1)) for k in keys if (m := re.match(r"body\.(\d+)\.res_layer\.0\.weight$", k))})
    for units in IR_UNITS.values():
        if sum(units) == n:
            return units
    raise ValueError(f"an IR body of {n} units matches none of the IR depths {sorted(IR_UNITS)}")


def _face_vit(state: dict, num_heads: Optional[int]) -> nn.Module:
    """A :mod:`vitfiqa.models` face ViT (plain or a ViT-FIQA variant) shaped like ``state``."""
    from ..models import model_class

    if not num_heads:
        raise ValueError("a face ViT's head count is not in its weights: it is read from a TorchScript file")
    proj, pos = state["patch_embed.proj.weight"], state["pos_embed"]
    dim, patch = int(proj.shape[0]), int(proj.shape[2])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.endswith(".norm1.weight")})
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    if "quality_token" in state:
        quality = "full" if state["feature.0.weight"].shape[1] == dim * int(pos.shape[1]) else "token"
    else:
        quality = "crfiqa" if "head_qs.1.weight" in state else None
    grid = int(round((int(pos.shape[1]) - (1 if "quality_token" in state else 0)) ** 0.5))
    img = 112 if 112 // patch == grid else grid * patch
    return model_class(quality)(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=int(num_heads),
                                mlp_ratio=mlp_ratio, num_features=int(state["feature.3.weight"].shape[0]))


def eager_from_state(state: dict, bn_eps: float = 1e-5, num_heads: Optional[int] = None) -> nn.Module:
    """An eager network of a known layout built from a state dict's keys and shapes (iResNet of any depth,
    CR-FIQA iResNet, CurricularFace IR, SDD-FIQA, eDifFIQA, vitfiqa face ViT given its ``num_heads``), with the
    weights loaded strictly."""
    keys = set(state)
    if "patch_embed.proj.weight" in keys and "pos_embed" in keys and "feature.3.weight" in keys:
        model: nn.Module = _face_vit(state, num_heads)
    elif "layer1.0.bn1.weight" in keys and "features.running_mean" in keys:
        layers = _iresnet_layers(keys)
        model = (CRFIQAIResNet(layers, eps=bn_eps) if "qs.weight" in keys else
                            IResNet(layers, eps=bn_eps))
    elif "input_layer.0.weight" in keys and "quality.3.weight" in keys:
        model = SDDFIQANet(_ir_units(keys))
    elif "input_layer.0.weight" in keys and "output_layer.3.weight" in keys:
        model = IRBackbone(_ir_units(keys))
    elif "mlp.l1.weight" in keys and "base_model.conv_6_dw.conv.weight" in keys:
        model = EDifFIQANet(MobileFaceNet())
    elif "mlp.l1.weight" in keys and "base_model.layer1.0.bn1.weight" in keys:
        model = EDifFIQANet(IResNet(_iresnet_layers(keys, "base_model."), eps=bn_eps))
    else:
        raise ValueError("the model's weights fit none of the baselines' network layouts (iResNet, CR-FIQA, "
                         "CurricularFace IR, SDD-FIQA, eDifFIQA, vitfiqa face ViT)")
    from ..fr_models import strict_load

    strict_load(model, state, "the TorchScript model's weights")
    return model.eval()


def eager_from_script(script: torch.jit.ScriptModule, example: torch.Tensor) -> nn.Module:
    """An eager copy of a TorchScript network of a known layout (what hooks and activation gradients need):
    built from its weights' keys and shapes, with its BatchNorm eps, then checked to give the same output as
    the TorchScript forward on ``example``; a clear error otherwise."""
    state = {k: v.detach().clone() for k, v in script.state_dict().items()}
    heads = {int(m.num_heads) for n, m in script.named_modules() if n.endswith(".attn") and hasattr(m, "num_heads")}
    try:
        model = eager_from_state(state, num_heads=heads.pop() if len(heads) == 1 else None)
    except ValueError as exc:
        raise ValueError(f"this TorchScript model cannot be used here: {exc}") from None
    scripted = dict(script.named_modules())
    for name, m in model.named_modules():  # eps is a constant, not a weight: copy it module by module
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and hasattr(scripted.get(name), "eps"):
            m.eps = float(scripted[name].eps)
    with torch.no_grad():
        a, b = script(example), model(example)
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    if not isinstance(a, torch.Tensor) or a.shape != b.shape or \
            not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-6):
        raise ValueError("this TorchScript model's weights fit a known layout but its forward computes something "
                         "else; give the eager module (an nn.Module) instead")
    return model
