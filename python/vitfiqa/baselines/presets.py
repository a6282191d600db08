"""Presets: the networks the baselines run on, as their official repositories build them, with their checkpoint
layouts and the input their official pipelines feed.

Each :class:`BaselinePreset` records ``channel_order`` and ``mean``/``std`` (applied to x/255) of the input the
official inference code effectively gives the network for a face image file, and says in ``source`` where that
comes from. vitfiqa decodes images to RGB; ``bgr`` reverses the channels, as OpenCV's ``cv2.imread`` does.
The recogniser presets (``arcface_*``, ``elasticface_r100``, ``magface_r100``, ``curricularface_ir101``) are
those of :data:`vitfiqa.fr_models.RECOGNIZERS`, with the input recorded there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..fr_models import RECOGNIZERS, _read, iresnet, recognizer_state_dict
from .nets import CRFIQAIResNet, EDifFIQANet, MobileFaceNet, SDDFIQANet


@dataclass(frozen=True)
class BaselinePreset:
    """A published network: ``build(**overrides)`` makes it (overrides such as ``layers`` build a smaller network
    of the same layout, e.g. for tests), ``layout`` names its checkpoint layout (:func:`state_dict_of`),
    ``channel_order``/``mean``/``std`` the input its official pipeline feeds, ``outputs`` what its forward returns
    (``embedding`` and/or ``quality``, in order), ``source`` where all this comes from."""

    name: str
    build: Callable[..., nn.Module]
    layout: str
    channel_order: str
    mean: float
    std: float
    outputs: tuple[str, ...]
    source: str

    @property
    def normalization(self) -> dict:
        return {"mean": [float(self.mean)] * 3, "std": [float(self.std)] * 3}

    def output_index(self, what: str) -> Optional[int]:
        return self.outputs.index(what) if what in self.outputs else None


LAYOUTS = ("insightface", "magface", "curricularface", "bare", "module")


def state_dict_of(checkpoint, layout: str) -> dict:
    """The network's state dict from an official checkpoint (path or loaded dict) of ``layout``:
    ``insightface`` / ``magface`` / ``curricularface`` as :func:`vitfiqa.fr_models.recognizer_state_dict`;
    ``bare``: the file is the state dict (CR-FIQA ``<N>backbone.pth``, eDifFIQA ``ediffiqa*.pth``); ``module``:
    every key carries DataParallel's ``module.`` prefix, which is removed (SDD-FIQA). Files are read with
    ``torch.load(weights_only=True)``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout in ("insightface", "magface", "curricularface"):
        return recognizer_state_dict(checkpoint, layout)
    raw = _read(checkpoint)
    if not raw or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise ValueError(f"a {layout} checkpoint is a state dict of tensors; got keys {sorted(map(str, raw))[:6]}")
    if layout == "module":
        plain = [k for k in raw if not k.startswith("module.")]
        if plain:
            raise ValueError(f"every key of this checkpoint layout starts with 'module.'; these do not: {plain[:6]}")
        return {k[len("module."):]: v for k, v in raw.items()}
    return dict(raw)


def _iresnet_builder(depth: int, eps: float):
    def build(layers=None, **kw):
        from ..fr_models import IResNet

        return IResNet(layers, eps=eps, **kw) if layers is not None else iresnet(depth, eps=eps, **kw)
    return build


def _recognizer(name: str, depth: int, eps: float, source: str) -> BaselinePreset:
    rec = RECOGNIZERS[name]
    return BaselinePreset(name, _iresnet_builder(depth, eps), rec.layout, rec.channel_order, rec.mean, rec.std,
                          ("embedding",), source)


def _curricularface(units=None, **kw):
    from ..fr_models import IRBackbone, ir_backbone

    return IRBackbone(units, **kw) if units is not None else ir_backbone(101, **kw)


def _crfiqa(depth):
    def build(layers=None, **kw):
        from ..fr_models import IRESNET_LAYERS

        return CRFIQAIResNet(layers or IRESNET_LAYERS[depth], **kw)
    return build


def _sddfiqa(units=None):
    return SDDFIQANet(units or (3, 4, 14, 3))


def _ediffiqa(depth):
    def build(layers=None):
        if depth is None:
            return EDifFIQANet(MobileFaceNet())
        from ..fr_models import IRESNET_LAYERS, IResNet

        return EDifFIQANet(IResNet(layers or IRESNET_LAYERS[depth]))
    return build


_RGB_CRFIQA = ("trained on RGB (mx.image.imdecode of the MS1MV2 .rec); evaluation/QualityModel.py reads its prepared "
               "files with cv2.imread and feeds them as read, (x/255-0.5)/0.5; those files were written channel-"
               "swapped by its extraction scripts, so the network sees RGB of the original images")
_EDIFFIQA = ("LSIbabnikz/eDifFIQA inference.py / dataset.py: PIL Image.open(...).convert('RGB'), Resize(112), "
             "ToTensor, Normalize(0.5, 0.5): RGB, (x/255-0.5)/0.5")

PRESETS: dict[str, BaselinePreset] = {p.name: p for p in (
    _recognizer("arcface_r50", 50, 1e-5, "insightface arcface_torch iresnet50 (see vitfiqa.fr_models)"),
    _recognizer("arcface_r100", 100, 1e-5, "insightface arcface_torch iresnet100 (see vitfiqa.fr_models)"),
    _recognizer("elasticface_r100", 100, 1e-5, "ElasticFace iresnet100 (see vitfiqa.fr_models)"),
    # MagFace as a quality method runs its own inference (BGR as read); as a recogniser in the CR-FIQA evaluation
    # (vitfiqa.fr_models.RECOGNIZERS) it gets RGB from the release files
    BaselinePreset("magface_r100", _iresnet_builder(100, 2e-5), "magface", "bgr", 0.0, 1.0, ("embedding",),
                   "IrvingMeng/MagFace models/iresnet.py (BatchNorm eps 2e-5, affine features BatchNorm1d); "
                   "inference/gen_feat.py reads cv2.imread (BGR as read) and feeds ToTensor + Normalize(0, 1) = x/255"),
    BaselinePreset("magface_r50", _iresnet_builder(50, 2e-5), "magface", "bgr", 0.0, 1.0, ("embedding",),
                   "IrvingMeng/MagFace iResNet-50 release, as magface_r100"),
    BaselinePreset("curricularface_ir101", _curricularface, "curricularface",
                   RECOGNIZERS["curricularface_ir101"].channel_order, RECOGNIZERS["curricularface_ir101"].mean,
                   RECOGNIZERS["curricularface_ir101"].std, ("embedding", "conv_out"),
                   "CurricularFace IR-101 (see vitfiqa.fr_models)"),
    BaselinePreset("grafiqs_r100", _iresnet_builder(100, 1e-5), "insightface", "rgb", 0.5, 0.5,
                   ("embedding",), "jankolf/GraFIQs extract_grafiqs.py: iresnet100, cv2.imread fed as read (no "
                   "--bgr2rgb), ToDtype(scale) + Normalize(0.5, 0.5); its evaluation runs on CR-FIQA's prepared "
                   "images, which were written channel-swapped, so the network sees RGB of the original images"),
    BaselinePreset("grafiqs_r50", _iresnet_builder(50, 1e-5), "insightface", "rgb", 0.5, 0.5,
                   ("embedding",), "jankolf/GraFIQs extract_grafiqs.py: iresnet50, as grafiqs_r100"),
    BaselinePreset("crfiqa_s", _crfiqa(50), "bare", "rgb", 0.5, 0.5, ("embedding", "quality"),
                   "fdbtrs/CR-FIQA backbones/iresnet.py iresnet50(qs=1) = CR-FIQA(S); " + _RGB_CRFIQA),
    BaselinePreset("crfiqa_l", _crfiqa(100), "bare", "rgb", 0.5, 0.5, ("embedding", "quality"),
                   "fdbtrs/CR-FIQA backbones/iresnet.py iresnet100(qs=1) = CR-FIQA(L); " + _RGB_CRFIQA),
    BaselinePreset("sddfiqa", _sddfiqa, "module", "rgb", 0.5, 0.5, ("quality",),
                   "Tencent/TFace quality/eval.py: R50(use_type='Qua'); PIL .convert('RGB'), ToTensor, "
                   "Normalize(0.5, 0.5): RGB, (x/255-0.5)/0.5; checkpoint keys 'module.'-prefixed"),
    BaselinePreset("ediffiqa_t", _ediffiqa(None), "bare", "rgb", 0.5, 0.5, ("quality",),
                   "eDifFIQA(T): MobileFaceNet (L2-normalised embedding) + MLP 512-1024-1, exact GELU; " + _EDIFFIQA),
    BaselinePreset("ediffiqa_s", _ediffiqa(18), "bare", "rgb", 0.5, 0.5, ("quality",),
                   "eDifFIQA(S): iResNet-18 + MLP 512-1024-1; " + _EDIFFIQA),
    BaselinePreset("ediffiqa_m", _ediffiqa(50), "bare", "rgb", 0.5, 0.5, ("quality",),
                   "eDifFIQA(M): iResNet-50 + MLP 512-1024-1; " + _EDIFFIQA),
    BaselinePreset("ediffiqa_l", _ediffiqa(100), "bare", "rgb", 0.5, 0.5, ("quality",),
                   "eDifFIQA(L): iResNet-100 + MLP 512-1024-1; " + _EDIFFIQA),
)}


def build(name: str, checkpoint=None, **overrides) -> nn.Module:
    """The network of preset ``name`` in eval mode, with an official checkpoint (path or loaded dict) loaded
    strictly when given; ``overrides`` (e.g. ``layers``) build a smaller network of the same layout."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[name]
    model = p.build(**overrides)
    if checkpoint is not None:
        from ..fr_models import strict_load

        strict_load(model, state_dict_of(checkpoint, p.layout), f"{name} checkpoint")
    return model.eval()
