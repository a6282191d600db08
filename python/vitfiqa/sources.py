"""What :func:`vitfiqa.load` (and the recogniser loader, the CLI, reproduce configs and Ray) accepts as a model,
turned into the one thing the C++ core loads: TorchScript, as a file path or serialised bytes.

Routes (:func:`resolve`):

``torchscript file`` / ``torchscript bytes``
    a path to a ``torch.jit.save`` archive, or its bytes, passed on as they are.
``ScriptModule``
    a ``torch.jit.ScriptModule`` object (scripted or traced): serialised with ``torch.jit.save`` into bytes
    (ScriptModule objects are never handed to C++).
``transformers``
    a Hugging Face vision model (``ViTModel``, ``Dinov2Model``, ``CLIPVisionModel``, ``BeitModel``, ...; a full
    ``CLIPModel`` gives its ``vision_model``): wrapped so that pixels go in and one tensor comes out (its
    ``pooler_output``, else ``last_hidden_state``; dict and ``ModelOutput`` results are handled), traced at the
    image size of its config. transformers is imported only here, and only for such a model.
``timm``
    a timm-layout ViT (``patch_embed``, ``blocks``, ``pos_embed``): its image size, mean and std from its
    ``pretrained_cfg`` / ``default_cfg`` when it has one; scripted, else traced.
``nn.Module``
    any other eager ``torch.nn.Module``: scripted, else traced at the image size of the model options (else
    :data:`vitfiqa.preprocess.DEFAULT_IMAGE_SIZE`), as :func:`vitfiqa.models.export_torchscript` does.
``preset``
    a preset name with its official checkpoint, ``load("cvlface_vit_b", checkpoint="model.pt")``: every
    :data:`vitfiqa.models.PRESETS` entry (:func:`vitfiqa.models.load_official_state_dict`), and, where a
    recogniser is expected, every :data:`vitfiqa.models.RECOGNIZERS` entry too.

Exported models carry their input contract (the model options given, else what the route knows: the config's
image size, timm's mean and std, a preset's 112x112) in the archive, so Ray actors and later loads read it.
A model exported here is identified (``sha256``, recorded in results tables) by its weights and route, not by
the bytes of the export, which tracing does not make reproducible.

Anything else (a state dict file, a folder, a checkpoint without a preset, an unknown preset) is refused with
one line naming the route that works.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .options import ModelOptions

ROLES = ("quality", "recognizer")

# Norms that the forward of these families applies after pooling, not to the token sequence; ViTNT-FIQA applies
# them to every block's tokens (the names the C++ analysis reports among its final_norm_candidates).
POST_POOLING_NORMS = ("post_layernorm", "pooler.layernorm", "pooler.norm", "fc_norm")


@dataclass(frozen=True)
class Resolved:
    """A model as the core loads it."""

    model: str | bytes                 # TorchScript: a file path, or serialised bytes
    route: str                         # which route of :func:`resolve` gave it
    sha256: str | None = None          # identity of an exported model (None: the digest of the file/bytes)
    post_pooling_norms: tuple = ()     # module paths in the export that may be its post-pooling final norm
    description: str = ""              # what the model was, for repr and messages

    @property
    def is_bytes(self) -> bool:
        return isinstance(self.model, bytes)


# -- names and messages ----------------------------------------------------------------------------------------

def preset_names(role: str = "quality") -> list[str]:
    """The preset names a ``checkpoint=`` can go with: the ViT presets, plus the CNN recognisers for role
    ``recognizer``."""
    from .models import PRESETS, RECOGNIZERS

    return sorted(PRESETS) + (sorted(RECOGNIZERS) if role == "recognizer" else [])


def _routes_hint(name: str, role: str) -> str:
    loader = "vitfiqa.load" if role == "quality" else "vitfiqa.recognizer.load_recognizer"
    return (f"load it with {loader}('<preset>', checkpoint={name!r}) (presets: {', '.join(preset_names(role))}) or "
            f"export it with vitfiqa.models.export_torchscript")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")


# -- what a file is --------------------------------------------------------------------------------------------

def _zip_names(data: bytes | Path) -> list[str] | None:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as zf:
            return zf.namelist()
    except Exception:  # not a zip archive, or a damaged one: the core's loader says what is wrong
        return None


def file_kind(data: bytes | Path) -> str:
    """``torchscript``, ``state dict`` (a ``torch.save`` archive or pickle: weights without code),
    ``safetensors`` or ``unknown`` (left to the core's loader, which says what is wrong)."""
    if isinstance(data, Path):
        with open(data, "rb") as f:
            head = f.read(16)
    else:
        head = data[:16]
    names = _zip_names(data) if head[:2] == b"PK" else None
    if names is not None:
        if any("/code/" in n or n.endswith("constants.pkl") or n.endswith("bytecode.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "state dict"
        return "unknown"
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format)
        return "state dict"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        return "safetensors"
    return "unknown"


def _file_route(path: Path, role: str) -> Resolved:
    kind = file_kind(path)
    if kind == "state dict":
        raise ValueError(f"{path.name} is a state dict (torch.save), not TorchScript: {_routes_hint(path.name, role)}")
    if kind == "safetensors":
        raise ValueError(f"{path.name} is a safetensors weights file, not TorchScript: build the model it belongs to "
                         f"and pass the module to vitfiqa.load, or {_routes_hint(path.name, role)}")
    return Resolved(str(path), "torchscript file", description=str(path))


def _bytes_route(data: bytes, role: str) -> Resolved:
    if not data:
        raise ValueError("model bytes are empty")
    kind = file_kind(data)
    if kind in ("state dict", "safetensors"):
        raise ValueError(f"the model bytes are a {kind}, not TorchScript: {_routes_hint('model.pt', role)}")
    return Resolved(data, "torchscript bytes", description="<bytes>")


def _path_route(model: str | os.PathLike, checkpoint, role: str) -> Resolved:
    name = os.fspath(model)
    presets = preset_names(role)
    if checkpoint is not None:
        if name not in presets:
            raise ValueError(f"checkpoint= goes with a preset name, and {name!r} is none: presets are "
                             f"{', '.join(presets)}")
        return _preset_route(name, checkpoint, role)
    path = Path(name)
    if name in presets and not path.is_file():
        raise ValueError(f"preset {name!r} needs its official checkpoint: "
                         f"{'vitfiqa.load' if role == 'quality' else 'load_recognizer'}({name!r}, checkpoint='model.pt')")
    if path.is_dir():
        if (path / "config.json").is_file():
            raise ValueError(f"{path} is a Hugging Face model folder, not a model file: load it with transformers "
                             "(AutoModel.from_pretrained) and pass the model object to vitfiqa.load")
        raise ValueError(f"{path} is a folder, not a model file: give a TorchScript file, or "
                         f"{_routes_hint('<checkpoint file>', role)}")
    if not path.is_file():
        hint = ""
        if not path.suffix and os.sep not in name and "/" not in name:
            hint = f" (and {name!r} is no preset: {', '.join(presets)})"
        raise FileNotFoundError(f"{'recognizer ' if role == 'recognizer' else ''}model file not found: {path}{hint}")
    return _file_route(path, role)


# -- exporting modules -------------------------------------------------------------------------------------------

def _is_transformers(model: nn.Module) -> bool:
    return any(c.__module__.split(".")[0] == "transformers" for c in type(model).__mro__)


def _is_timm_layout(model: nn.Module) -> bool:
    if type(model).__module__.split(".")[0] == "timm":
        return True
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "pos_embed")) and (
        hasattr(model, "pretrained_cfg") or hasattr(model, "default_cfg") or hasattr(model, "cls_token"))


class HFVisionWrapper(nn.Module):
    """Pixels in, one tensor out, for tracing a transformers vision model: its ``pooler_output`` when it has
    one, else its ``last_hidden_state`` (dict or ``ModelOutput`` results; a tuple gives its first element)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):  # ModelOutput is an OrderedDict: absent fields are not keys
            pooled = out.get("pooler_output")
            return pooled if pooled is not None else out["last_hidden_state"]
        if isinstance(out, (tuple, list)):
            return out[1] if len(out) > 1 and isinstance(out[1], torch.Tensor) and out[1].dim() == 2 else out[0]
        raise TypeError(f"the model returns {type(out).__name__}; expected a tensor, a dict or a ModelOutput")


def _size(value, what: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(isinstance(v, int) for v in value):
        return [int(v) for v in value[-2:]]  # (C, H, W) in timm's input_size
    raise ValueError(f"{what} is {value!r}; expected an int or (H, W)")


def _hf_parts(model: nn.Module) -> tuple[nn.Module, dict]:
    """The vision model to trace and its contract hints from the config (image size, channel count)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "image_size", None) is None and hasattr(model, "vision_model"):
        model = model.vision_model  # e.g. CLIPModel / SiglipModel: score the vision tower
        config = getattr(model, "config", None)
    if config is None or getattr(config, "image_size", None) is None:
        raise ValueError(f"{type(model).__name__} is a transformers model without config.image_size: pass a vision "
                         "model (ViTModel, Dinov2Model, CLIPVisionModel, ...)")
    channels = getattr(config, "num_channels", 3)
    if channels != 3:
        raise ValueError(f"the model takes {channels} input channels (config.num_channels); vitfiqa feeds RGB images "
                         "(3 channels)")
    return model, {"image_size": _size(config.image_size, "config.image_size")}


def _timm_hints(model: nn.Module) -> dict:
    """Image size (and mean / std when given) from a timm model's pretrained_cfg / default_cfg, else its patch
    embedding's ``img_size``."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    hints: dict = {}
    if isinstance(cfg, Mapping):
        if cfg.get("input_size") is not None:
            size = _size(tuple(cfg["input_size"]), "pretrained_cfg['input_size']")
            if len(cfg["input_size"]) == 3 and cfg["input_size"][0] != 3:
                raise ValueError(f"the model takes {cfg['input_size'][0]} input channels (pretrained_cfg "
                                 "input_size); vitfiqa feeds RGB images (3 channels)")
            hints["image_size"] = size
        if cfg.get("mean") is not None and cfg.get("std") is not None:
            hints["normalization"] = {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}
    if "image_size" not in hints:
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if size is not None:
            hints["image_size"] = _size(tuple(size) if not isinstance(size, int) else size, "patch_embed.img_size")
    return hints


def _options_contract(options: ModelOptions) -> dict:
    out = {}
    if options.image_size is not None:
        out["image_size"] = options.image_size
    if options.channel_order is not None:
        out["channel_order"] = options.channel_order
    if options.normalization is not None:
        out["normalization"] = dict(options.normalization)
    from .contract import check_input_contract

    return check_input_contract(out)  # canonical: image_size [H, W]


def _weights_digest(module: nn.Module, route: str, contract: dict, extra: str = "") -> str:
    """Identity of an exported module: route, class, contract and every parameter and buffer (names, dtypes,
    shapes, values). Tracing is not byte-reproducible, so the export's bytes cannot be the identity."""
    h = hashlib.sha256()
    h.update(json.dumps([route, f"{type(module).__module__}.{type(module).__qualname__}", contract, extra],
                        sort_keys=True, default=str).encode())
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _save(ts: torch.jit.ScriptModule, contract: dict | None) -> bytes:
    from .contract import INPUT_CONTRACT_FILE, check_input_contract

    extra = {}
    if contract:
        extra = {INPUT_CONTRACT_FILE: json.dumps(check_input_contract(contract), sort_keys=True)}
    buf = io.BytesIO()
    torch.jit.save(ts, buf, _extra_files=extra)
    return buf.getvalue()


def _export(module: nn.Module, contract: dict, how: tuple[str, ...]) -> bytes:
    """Script (or trace at the contract's image size) an eval-mode module into TorchScript bytes with its input
    contract; the first of ``how`` that works."""
    from .preprocess import DEFAULT_IMAGE_SIZE

    modes = {m: m.training for m in module.modules()}  # restored afterwards, module by module
    module.eval()
    errors = []
    try:
        for method in how:
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")  # torch.jit deprecation and tracer notices
                    if method == "script":
                        ts = torch.jit.script(module)
                    else:
                        h, w = contract.get("image_size") or DEFAULT_IMAGE_SIZE
                        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
                        device = next((p.device for p in module.parameters()), torch.device("cpu"))
                        example = torch.zeros(2, 3, h, w, dtype=dtype, device=device)
                        ts = torch.jit.trace(module, example, check_trace=False)
                return _save(ts, contract)
            except Exception as exc:  # noqa: BLE001 - scripting fails with many error types; try the next way
                text = str(exc).strip().splitlines()
                errors.append(f"{method}: {type(exc).__name__}: {text[0] if text else ''}")
    finally:
        for m, mode in modes.items():
            m.training = mode
    raise ValueError(f"{type(module).__name__} could not be exported to TorchScript ({'; '.join(errors)}); export it "
                     "yourself (vitfiqa.models.export_torchscript) and load the file")


def _module_route(model: nn.Module, options: ModelOptions) -> Resolved:
    given = _options_contract(options)
    name = type(model).__name__
    if isinstance(model, torch.jit.ScriptModule):
        data = _save(model, given or None)
        return Resolved(data, "ScriptModule", _weights_digest(model, "ScriptModule", given, model.code
                                                              if hasattr(model, "code") else ""),
                        description=f"<ScriptModule {model.original_name}>")
    if _is_transformers(model):
        vision, hints = _hf_parts(model)
        contract = {**hints, **given}
        wrapper = HFVisionWrapper(vision)
        data = _export(wrapper, contract, ("trace",))
        return Resolved(data, "transformers", _weights_digest(vision, "transformers", contract),
                        tuple(f"model.{n}" for n in POST_POOLING_NORMS), f"<transformers {type(vision).__name__}>")
    if _is_timm_layout(model):
        contract = {**_timm_hints(model), **given}
        data = _export(model, contract, ("script", "trace"))
        return Resolved(data, "timm", _weights_digest(model, "timm", contract), POST_POOLING_NORMS,
                        f"<timm-layout {name}>")
    contract = dict(given)
    data = _export(model, contract, ("script", "trace"))
    return Resolved(data, "nn.Module", _weights_digest(model, "nn.Module", contract), description=f"<nn.Module {name}>")


def _preset_route(name: str, checkpoint, role: str) -> Resolved:
    from .models import PRESETS, RECOGNIZERS, load_official_state_dict, preset
    from .fr_models import INPUT_SIZE, recognizer_state_dict, strict_load

    if isinstance(checkpoint, (str, os.PathLike)):
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        if file_kind(ckpt) == "torchscript":
            raise ValueError(f"{ckpt.name} is TorchScript, not a checkpoint: load it directly, vitfiqa.load({str(ckpt)!r})")
        label = ckpt.name
    elif isinstance(checkpoint, Mapping):
        label = "<state dict>"
    else:
        raise TypeError(f"checkpoint must be a file path or a state dict, got {type(checkpoint).__name__}")
    # Built without initialising the weights (on the meta device, then given memory): the checkpoint, loaded
    # strictly (every parameter and buffer), overwrites them all; the random init alone took seconds.
    if name in PRESETS:
        with torch.device("meta"):
            module = preset(name)
        module = load_official_state_dict(module.to_empty(device="cpu"), checkpoint
                                          if not isinstance(checkpoint, Mapping) else dict(checkpoint))
        contract = {"image_size": [112, 112]}
    else:
        rec = RECOGNIZERS[name]
        with torch.device("meta"):
            module = rec.build()
        module = strict_load(module.to_empty(device="cpu"), recognizer_state_dict(
            checkpoint if not isinstance(checkpoint, Mapping) else dict(checkpoint), rec.layout),
            f"{name} checkpoint").eval()
        contract = {"image_size": list(INPUT_SIZE), "channel_order": rec.channel_order,
                    "normalization": {"mean": [rec.mean] * 3, "std": [rec.std] * 3}}
    data = _export(module, contract, ("script",))
    return Resolved(data, "preset", _weights_digest(module, f"preset {name}", contract),
                    description=f"<preset {name}, checkpoint {label}>")


# -- the dispatch ------------------------------------------------------------------------------------------------

def resolve(model: Any, *, checkpoint=None, options: ModelOptions | Mapping | None = None,
            role: str = "quality") -> Resolved:
    """``model`` (any route above) -> :class:`Resolved` TorchScript. ``checkpoint``: with a preset name only.
    ``options``: the model options; their image size, channel order and normalisation are recorded in an
    export. ``role``: ``quality`` or ``recognizer`` (which presets a ``checkpoint`` may go with)."""
    _check_role(role)
    options = ModelOptions.of(options)
    if isinstance(model, (str, os.PathLike)):
        return _path_route(model, checkpoint, role)
    if checkpoint is not None:
        raise ValueError(f"checkpoint= goes with a preset name (presets: {', '.join(preset_names(role))}), not with "
                         f"a {type(model).__name__}")
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _bytes_route(bytes(model), role)
    if isinstance(model, nn.Module):
        return _module_route(model, options)
    if isinstance(model, Mapping):
        raise ValueError("a state dict is weights without the model: "
                         f"{_routes_hint('<state dict>', role).replace(repr('<state dict>'), 'state_dict')}")
    raise TypeError(f"cannot load a {type(model).__name__} as a model: give a TorchScript file or bytes, a "
                    "torch.nn.Module (eager, scripted or traced; transformers and timm ViTs included) or a preset name "
                    "with checkpoint=")


def post_pooling_norm(resolved: Resolved, info: Mapping) -> str | None:
    """The final norm to name for a model whose forward applies none to the tokens: the first of the route's
    post-pooling norm names that the analysis found applied after the last block (``final_norm_candidates``)."""
    if info.get("has_final_norm") or not resolved.post_pooling_norms:
        return None
    candidates = list(info.get("final_norm_candidates") or [])
    return next((c for c in candidates if c in resolved.post_pooling_norms), None)
