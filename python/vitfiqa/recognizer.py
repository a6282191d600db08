"""Face recognizers of any architecture, used for comparison scores (embeddings only).

A recognizer is any TorchScript model (CNN such as iResNet-100, or ViT) whose forward maps a preprocessed
image batch to embeddings (or a tuple whose element ``output`` is the embedding, e.g. CurricularFace's
``(embedding, conv_out)``). It is run as is by the C++ core (``vitfiqa._core.ScriptModel``): no attention
analysis, so CNNs work.

Each recognizer carries its input preprocessing: ``image_size``, ``channel_order`` (``rgb`` or ``bgr``; the
official CR-FIQA pipeline feeds RGB from the release files, see :mod:`vitfiqa.fr_models`) and ``mean``/``std`` applied to x/255
(insightface ArcFace / ElasticFace / CurricularFace: 0.5, 0.5; MagFace: 0, 1, i.e. x/255 only). Each comes from
the explicit argument, else from the input contract stored in the TorchScript file
(:func:`vitfiqa.models.export_torchscript` / :func:`vitfiqa.models.export_recognizer`), else the defaults
(112x112, rgb, 0.5/0.5). The arithmetic is :func:`vitfiqa.preprocess.normalize_uint8`'s. And ``flip``:

``concat`` (CR-FIQA evaluation)
    embed the image and its horizontal flip (of the decoded uint8 image), L2-normalise each, concatenate
    [original, flipped] (2 x D), not normalised again.
``sum`` (insightface IJB evaluation)
    the raw sum of the two embeddings.
``none``
    the image's embedding only.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .embeddings import flip_concat
from .loader import to_model_input
from .options import ModelOptions, no_unknown, resolve_device, take_deprecated
from .preprocess import (CHANNEL_ORDERS, DEFAULT_CHANNEL_ORDER, DEFAULT_IMAGE_SIZE, DEFAULT_NORMALIZATION,
                         check_channel_order)

FLIP_MODES = ("concat", "sum", "none")


def _triple(v, name: str) -> tuple[float, float, float]:
    if isinstance(v, (str, bytes)) or not (np.isscalar(v) or isinstance(v, (list, tuple))):
        raise ValueError(f"{name} must be one number or three (per channel), got {v!r}")
    t = (float(v),) * 3 if np.isscalar(v) else tuple(float(x) for x in v)
    if len(t) != 3 or not all(np.isfinite(t)):
        raise ValueError(f"{name} must be one number or three (per channel), got {v!r}")
    return t


class Recognizer:
    """A TorchScript face recognizer (path or bytes) used for embeddings only.

    ``options`` (a :class:`vitfiqa.options.ModelOptions` or its dict): device, dtype and the input contract
    (``image_size``, ``channel_order``, ``normalization`` = {"mean": one number or three, "std": ...}; each
    given value overrides the model's record; ``final_norm`` does not apply). The old keywords (``device=``,
    ``mean=``, ...) still work for one release, with a DeprecationWarning.

    >>> r = Recognizer("arcface_r100.pt", ModelOptions(channel_order="bgr"), flip="concat")
    >>> e = r.embed(uint8_nhwc_batch)          # float32 [B, 1024]
    """

    def __init__(self, model, options: ModelOptions | dict | None = None, *,
                 flip: str = "concat", output: int = 0, name: str | None = None, checkpoint=None,
                 **deprecated):
        from . import _core
        from .contract import read_input_contract
        from .sources import resolve

        if isinstance(options, (str, torch.device)):  # the old second positional argument, the device
            deprecated["device"], options = options, None
        norm_changes = {k: deprecated.pop(k) for k in ("mean", "std") if k in deprecated}
        for k in norm_changes:
            warnings.warn(f"Recognizer: {k}= is deprecated: pass options=ModelOptions(normalization={{'mean': ..., "
                          f"'std': ...}})", DeprecationWarning, stacklevel=2)
        changes = take_deprecated(deprecated, ModelOptions, "options", "Recognizer")
        no_unknown(deprecated, "Recognizer")
        options = ModelOptions.of(options).replace(**changes)
        if norm_changes:
            options = options.replace(normalization={**(options.normalization or {}), **norm_changes})
        self.options = options
        if options.final_norm is not None:
            raise ValueError("a recognizer is run as it is: ModelOptions.final_norm does not apply to it")
        channel_order, image_size = options.channel_order, options.image_size
        given_norm = dict(options.normalization or {})
        unknown = set(given_norm) - {"mean", "std"}
        if unknown:
            raise ValueError(f"normalization takes 'mean' and 'std', got {sorted(unknown)}")
        mean, std, dtype = given_norm.get("mean"), given_norm.get("std"), options.dtype
        if channel_order is not None:
            check_channel_order(channel_order)
        # Any route of vitfiqa.sources (a module, a ScriptModule, a preset name with its checkpoint, including
        # the CNN recognisers of vitfiqa.models.RECOGNIZERS) becomes TorchScript here.
        given = {k: v for k, v in (("image_size", image_size), ("channel_order", channel_order)) if v is not None}
        src = resolve(model, checkpoint=checkpoint, options=given, role="recognizer")
        model = src.model
        if name is None and src.route == "preset":
            name = src.description.split(",")[0].removeprefix("<preset ")
        if flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
        device = resolve_device(options.device)
        if isinstance(model, (bytes, bytearray)):
            self._core = _core.ScriptModel.from_bytes(bytes(model), device, str(dtype))
            self.source = src.description if src.route != "torchscript bytes" else "<bytes>"
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"recognizer model file not found: {path}")
            self._core = _core.ScriptModel(str(path), device, str(dtype))
            self.source = str(path)
        record = read_input_contract(model if isinstance(model, (bytes, bytearray)) else Path(model)) or {}
        norm = record.get("normalization", DEFAULT_NORMALIZATION)
        self.mean = _triple(norm["mean"] if mean is None else mean, "mean")
        self.std = _triple(norm["std"] if std is None else std, "std")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")
        size = image_size if image_size is not None else record.get("image_size", DEFAULT_IMAGE_SIZE)
        self.image_size = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
        self.channel_order = channel_order or record.get("channel_order", DEFAULT_CHANNEL_ORDER)
        self.name = name or (Path(self.source).stem if not isinstance(model, bytes) else "recognizer")
        self.device = torch.device(device)
        self.dtype = getattr(torch, str(dtype))
        self.flip = flip
        self.output = int(output)

    def __repr__(self) -> str:
        return (f"Recognizer({self.source!r}, channel_order={self.channel_order!r}, mean={self.mean}, "
                f"std={self.std}, flip={self.flip!r})")

    def preprocess(self, images) -> torch.Tensor:
        """uint8 NHWC RGB batch (NumPy or torch) -> the model's float NCHW input on its device."""
        x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be a uint8 [B,H,W,3] batch, got {tuple(x.shape)} {x.dtype}")
        if tuple(x.shape[1:3]) != self.image_size:
            raise ValueError(f"images are {tuple(x.shape[1:3])}, the recognizer expects {self.image_size}")
        if x.shape[0] == 0:
            raise ValueError("empty image batch")
        return to_model_input(x, self)

    @property
    def normalization(self) -> dict:
        """``{"mean": [3], "std": [3]}`` applied to x/255, the form :func:`vitfiqa.loader.to_model_input` reads."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def forward(self, x: torch.Tensor) -> np.ndarray:
        """The model's forward on a prepared batch -> float32 embeddings [B, D]."""
        out = self._core.forward(x)
        if isinstance(out, tuple):
            if not -len(out) <= self.output < len(out):
                raise ValueError(f"the recognizer returns {len(out)} outputs; output={self.output} does not exist")
            out = out[self.output]
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the recognizer's output {shape} is not an embedding batch [B, D]")
        e = out.detach().float().cpu().numpy()
        if not np.isfinite(e).all():
            raise ValueError("the recognizer produced NaN or Inf embeddings")
        return e

    def embed(self, images) -> np.ndarray:
        """uint8 NHWC RGB images -> float32 embeddings with this recognizer's flip mode applied."""
        arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        e = self.forward(self.preprocess(arr))
        if self.flip == "none":
            return e
        # Flip of the decoded uint8 image along its width, as the CR-FIQA and insightface evaluations do.
        f = self.forward(self.preprocess(np.ascontiguousarray(arr[:, :, ::-1])))
        return flip_concat(e, f) if self.flip == "concat" else e + f


def load_recognizer(model, checkpoint=None, **options) -> Recognizer:
    """A :class:`Recognizer` from any route of :mod:`vitfiqa.sources`: a TorchScript file or bytes, a
    ``torch.nn.Module``, or a preset name with its official checkpoint, e.g.
    ``load_recognizer("arcface_r100", checkpoint="backbone.pth")`` (:data:`vitfiqa.models.RECOGNIZERS`, whose
    input, channel order and the paper's mean / std, comes with the preset) or ``load_recognizer("cvlface_vit_b",
    checkpoint="model.pt")`` (:data:`vitfiqa.models.PRESETS`). ``options``: as :class:`Recognizer`
    (``options=ModelOptions(...)``, ``flip=``, ``output=``, ``name=``)."""
    return Recognizer(model, checkpoint=checkpoint, **options)
