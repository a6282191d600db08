"""The network a baseline runs on, with its input contract: a preset (with an official checkpoint), an eager
``nn.Module``, a TorchScript module or file, or a :class:`vitfiqa.recognizer.Recognizer`."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..options import ModelOptions, no_unknown, resolve_device, take_deprecated
from ..preprocess import DEFAULT_CHANNEL_ORDER, DEFAULT_IMAGE_SIZE, DEFAULT_NORMALIZATION, check_channel_order
from .presets import PRESETS, BaselinePreset, build


def _state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode() + b"\0")
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BaselineModel:
    """A network for the baselines and the input it is fed.

    ``model``: a preset name (:data:`vitfiqa.baselines.PRESETS`; ``checkpoint`` = its official checkpoint file or
    loaded dict, read with ``weights_only=True``; ``overrides`` build a smaller network of the same layout), an
    eager ``nn.Module``, a ``torch.jit.ScriptModule``, a TorchScript file (path or bytes; its recorded input
    contract is read) or a :class:`vitfiqa.recognizer.Recognizer` (its file and input). ``options`` (a
    :class:`vitfiqa.options.ModelOptions` or its dict): ``device``; ``channel_order`` ("rgb" | "bgr"),
    ``normalization`` ({"mean": [3], "std": [3]} on x/255) and ``image_size`` override the preset's / file's
    record; the defaults are rgb and 0.5 / 0.5. The baselines run in float32 on the network as it is (no
    ``final_norm``). The old keywords (``device=``, ...) still work for one release, with a DeprecationWarning.

    Methods that need module hooks or activation gradients (SER-FIQ, GraFIQs) run on an eager module: a
    TorchScript network is rebuilt eagerly from its weights when its layout is a known one (:attr:`eager`)."""

    def __init__(self, model: Any, options: ModelOptions | Mapping | None = None, *, checkpoint=None,
                 overrides: Optional[Mapping] = None, **deprecated):
        from ..contract import check_input_contract, read_input_contract

        changes = take_deprecated(deprecated, ModelOptions, "options", "BaselineModel")
        no_unknown(deprecated, "BaselineModel")
        options = ModelOptions.of(options).replace(**changes) if changes else ModelOptions.of(options)
        if options.dtype != "float32":
            raise ValueError(f"the baselines run in float32, not {options.dtype}")
        if options.final_norm is not None:
            raise ValueError("ModelOptions.final_norm does not apply to a baseline's network")
        self.options = options
        channel_order, normalization, image_size = options.channel_order, options.normalization, options.image_size
        self.device = torch.device(resolve_device(options.device))
        self.dtype = torch.float32
        self.preset: Optional[BaselinePreset] = None
        record: dict = {}
        if overrides and not isinstance(model, str):
            raise ValueError("overrides apply to a preset name only")
        if checkpoint is not None and not isinstance(model, str):
            raise ValueError("checkpoint= goes with a preset name (the official layouts); a module or TorchScript "
                             "file carries its weights")
        if isinstance(model, str) and model in PRESETS:
            self.preset = PRESETS[model]
            self.network = build(model, checkpoint, **dict(overrides or {}))
            self.name = model
            record = {"channel_order": self.preset.channel_order, "normalization": self.preset.normalization}
            self.sha256 = _state_sha256(self.network)
        elif isinstance(model, nn.Module):
            self.network = model.eval()
            self.name = type(model).__name__ if not isinstance(model, torch.jit.ScriptModule) else model.original_name
            self.sha256 = _state_sha256(model)
        else:
            from ..recognizer import Recognizer

            if isinstance(model, Recognizer):
                if model.source == "<bytes>":
                    raise ValueError("a Recognizer loaded from bytes: pass the bytes themselves")
                record = {"channel_order": model.channel_order, "normalization": model.normalization,
                          "image_size": list(model.image_size)}
                model = model.source
            if isinstance(model, (bytes, bytearray)):
                data, self.name = bytes(model), "<bytes>"
            elif isinstance(model, (str, os.PathLike)):
                path = Path(model)
                if not path.is_file():
                    raise FileNotFoundError(f"not a preset ({', '.join(sorted(PRESETS))}) and no such model file: "
                                            f"{path}")
                data, self.name = path.read_bytes(), path.stem
            else:
                raise TypeError(f"model must be a preset name, an nn.Module, a TorchScript file or a Recognizer, got "
                                f"{type(model).__name__}")
            if not data:
                raise ValueError("model bytes are empty")
            try:
                self.network = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
            except Exception as exc:  # torch raises RuntimeError and others for a file that is not TorchScript
                raise ValueError(f"cannot load {self.name} as TorchScript: {str(exc).strip().splitlines()[0]}") \
                    from None
            record = {**(read_input_contract(data) or {}), **record}
            self.sha256 = hashlib.sha256(data).hexdigest()
        explicit = {}
        if channel_order is not None:
            explicit["channel_order"] = check_channel_order(channel_order)
        if normalization is not None:
            explicit["normalization"] = dict(normalization)
        if image_size is not None:
            explicit["image_size"] = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        contract = check_input_contract({**record, **explicit})
        self.channel_order = contract.get("channel_order", DEFAULT_CHANNEL_ORDER)
        self.normalization = contract.get("normalization", DEFAULT_NORMALIZATION)
        self.image_size = tuple(contract.get("image_size", DEFAULT_IMAGE_SIZE))
        self.network = self.network.to(self.device)
        self._eager: Optional[nn.Module] = None

    def __repr__(self) -> str:
        return (f"BaselineModel({self.name!r}, channel_order={self.channel_order!r}, "
                f"normalization={self.normalization}, device={self.device})")

    @property
    def input_contract(self) -> dict:
        return {"image_size": self.image_size, "channel_order": self.channel_order,
                "normalization": self.normalization}

    @property
    def is_script(self) -> bool:
        return isinstance(self.network, torch.jit.ScriptModule)

    @property
    def eager(self) -> nn.Module:
        """The network as an eager module (a TorchScript network rebuilt from its weights, checked to compute the
        same output)."""
        if not self.is_script:
            return self.network
        if self._eager is None:
            from .nets import eager_from_script

            g = torch.Generator().manual_seed(0)
            example = torch.randn(1, 3, *self.image_size, generator=g).to(self.device)
            self._eager = eager_from_script(self.network, example).to(self.device)
        return self._eager

    def module_names(self) -> set[str]:
        return {n for n, _ in self.network.named_modules()}

    def prepare(self, images) -> torch.Tensor:
        """uint8 RGB images ([B,H,W,3] NumPy/torch, or one [H,W,3]) -> the network's float input in its channel
        order and normalisation; a float [B,3,H,W] tensor is taken as already prepared."""
        from ..loader import to_model_input

        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = images
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"a prepared float batch is [B,3,H,W], got {tuple(x.shape)}")
            x = x.to(self.device, torch.float32)
        else:
            a = images if isinstance(images, torch.Tensor) else np.asarray(images)
            if a.ndim == 3:
                a = a[None]
            if a.dtype not in (np.uint8, torch.uint8) or a.ndim != 4 or a.shape[-1] != 3:
                raise ValueError(f"images must be uint8 [B,H,W,3] RGB (or a prepared float [B,3,H,W] tensor), got "
                                 f"{tuple(a.shape)} {a.dtype}")
            if tuple(a.shape[1:3]) != tuple(self.image_size):
                raise ValueError(f"images are {tuple(a.shape[1:3])}, the network takes {tuple(self.image_size)}")
            x = to_model_input(a, self)
        if x.shape[0] == 0:
            raise ValueError("empty image batch")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or Inf values")
        return x.contiguous()

    def outputs(self, x: torch.Tensor) -> tuple:
        out = self.network(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def _pick(self, out: tuple, what: str) -> torch.Tensor:
        idx = self.preset.output_index(what) if self.preset is not None else None
        if idx is None and self.preset is not None:
            raise ValueError(f"preset {self.name!r} outputs {self.preset.outputs}, not an {what}")
        if idx is None:
            idx = 0 if what == "embedding" else (1 if len(out) == 2 else 0)
        t = out[idx]
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"the network's {what} output is not a [B, D] tensor")
        return t

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised embedding [B, D] (the first output, or the preset's ``embedding`` output)."""
        return self._pick(self.outputs(x), "embedding")

    def quality(self, x: torch.Tensor) -> torch.Tensor:
        """The network's quality output [B]: the preset's ``quality`` output, else the second of two outputs
        (``(embedding, quality)`` as CR-FIQA) or the only one."""
        q = self._pick(self.outputs(x), "quality")
        if q.shape[1] != 1:
            raise ValueError(f"the network's quality output has {q.shape[1]} values per image, not 1")
        return q[:, 0]
