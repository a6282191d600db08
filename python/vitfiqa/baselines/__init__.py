"""The baseline FIQA methods of the papers' tables, computed by the package on any recogniser it loads, named
like the four ViT methods (one registry: :func:`source_of`).

============  ================================================  ===========================================
method        columns (higher = better)                         network (default preset)
============  ================================================  ===========================================
magface       magface                                           any recogniser (magface_r100)
serfiq        serfiq (paper), serfiq_released                   recogniser with a found embedding layer
                                                                (arcface_r100)
crfiqa        crfiqa                                            CR-FIQA(S)/(L) (crfiqa_l)
grafiqs       grafiqs (= block 2), grafiqs_image, _block1..4    recogniser with BatchNorm2d (grafiqs_r100)
sddfiqa       sddfiqa                                           SDD-FIQA (sddfiqa)
ediffiqa      ediffiqa                                          eDifFIQA(T)/(S)/(M)/(L) (ediffiqa_t)
============  ================================================  ===========================================

>>> import vitfiqa.baselines as vb
>>> m = vb.load("crfiqa_l", checkpoint="181952backbone.pth")
>>> vb.score("crfiqa", m, uint8_rgb_images).scores["crfiqa"]
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from . import crfiqa, ediffiqa, grafiqs, magface, sddfiqa, serfiq  # noqa: F401  (each registers its method)
from ..options import ModelOptions, no_unknown, take_deprecated
from .model import BaselineModel
from .presets import PRESETS, BaselinePreset, build, state_dict_of
from .registry import REGISTRY, BaselineMethod, all_columns, display_name, methods, score_columns, source_of

METHODS = methods()


def load(model: Any, options: ModelOptions | Mapping | None = None, *, checkpoint=None,
         overrides: Mapping | None = None, **deprecated) -> BaselineModel:
    """A :class:`BaselineModel`: a preset name (+ ``checkpoint``), an ``nn.Module``, a TorchScript module, file or
    bytes, or a :class:`vitfiqa.recognizer.Recognizer`. ``options``: a :class:`vitfiqa.options.ModelOptions` (or
    its dict): device, image_size, channel_order, normalization (the baselines run in float32; final_norm does not
    apply). The old keywords (``device=``, ``channel_order=``, ...) still work for one release, with a
    DeprecationWarning."""
    changes = take_deprecated(deprecated, ModelOptions, "options", "vitfiqa.baselines.load")
    no_unknown(deprecated, "vitfiqa.baselines.load")
    return BaselineModel(model, ModelOptions.of(options).replace(**changes), checkpoint=checkpoint,
                         overrides=overrides)


def _methods(names: Iterable[str] | str) -> list[str]:
    """Baseline names from method names or columns (``serfiq_released`` -> ``serfiq``), once each, in order."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        kind, method = source_of(str(n).strip())
        if kind != "baseline":
            raise ValueError(f"{n!r} is a ViT method: score it with vitfiqa.load(model).score(...)")
        if method not in out:
            out.append(method)
    if not out:
        raise ValueError("no baseline method given")
    return out


def columns(names: Iterable[str] | str) -> list[str]:
    """The columns that scoring ``names`` writes, in order."""
    return [c for m in _methods(names) for c, _ in REGISTRY[m].columns]


def score(names: Iterable[str] | str, model: Any, images: Any, *, checkpoint=None, batch_size: int | None = None,
          options: Mapping[str, Mapping] | None = None, model_options: ModelOptions | Mapping | None = None,
          **method_options):
    """Score ``images`` with one or more baselines on ``model`` -> :class:`vitfiqa.QualityResult` (float64 [B]
    per column).

    names: baseline names or columns (``"serfiq"``, ``["magface", "grafiqs"]``, ``"serfiq_released"``).
    model: a :class:`BaselineModel` or anything :func:`load` takes (with ``checkpoint`` and ``model_options``, a
    :class:`vitfiqa.options.ModelOptions`).
    images: uint8 RGB [B,H,W,3] (NumPy / torch), or a prepared float [B,3,H,W] tensor.
    options: per-method options, ``{"serfiq": {"T": 100, "seed": 0}}``; keywords (``T=...``, ``seed=...``) go to
    the one method that has them. batch_size: images per forward (None: all at once). model_options: how a
    ``model`` that is not yet a :class:`BaselineModel` is loaded (:func:`load`; ``device=`` is the old spelling).
    """
    from ..api import QualityResult
    from ..options import check_batch_size

    check_batch_size(batch_size, allow_none=True)
    model_changes = take_deprecated(method_options, ModelOptions, "model_options", "vitfiqa.baselines.score")
    ms = _methods(names)
    opts = {m: dict((options or {}).get(m, {})) for m in ms}
    unknown = set(options or {}) - set(ms)
    if unknown:
        raise TypeError(f"options for methods not scored: {sorted(unknown)}")
    for k, v in method_options.items():
        owners = [m for m in ms if k in REGISTRY[m].options]
        if len(owners) != 1:
            raise TypeError(f"option {k!r} belongs to {'none' if not owners else 'several'} of the methods {ms}")
        opts[owners[0]][k] = v
    opts = {m: REGISTRY[m].check_options(opts[m]) for m in ms}
    if isinstance(model, BaselineModel):
        if checkpoint is not None or model_options is not None or model_changes:
            raise ValueError("checkpoint / model_options go with a model to load, not a loaded BaselineModel")
        bm = model
    else:
        bm = load(model, ModelOptions.of(model_options).replace(**model_changes), checkpoint=checkpoint)
    x = bm.prepare(images)
    step = batch_size or x.shape[0]
    parts: dict[str, list] = {}
    for s in range(0, x.shape[0], step):
        for m in ms:
            for col, v in REGISTRY[m].compute(bm, x[s:s + step], **opts[m]).items():
                parts.setdefault(col, []).append(v.detach().cpu().double())
    order = columns(ms)
    return QualityResult(scores={c: torch.cat(parts[c]) for c in order})


__all__ = ["BaselineModel", "BaselineMethod", "BaselinePreset", "PRESETS", "REGISTRY", "METHODS", "load", "score",
           "columns", "methods", "score_columns", "source_of", "all_columns", "display_name", "build", "state_dict_of"]
