"""Run and model options: one typed home each, carried whole through the API, pipeline, Ray, reproduce, the
recogniser and the CLI (a function takes the options object, not a dozen of its fields).

``ScoreConfig`` (what the methods compute) lives in :mod:`vitfiqa.config`; ``ModelOptions`` says how a model
is loaded and fed; ``RunOptions`` says how a run over many images is executed; ``TrainOptions`` how
:mod:`vitfiqa.training` trains. Scores never depend on ``RunOptions`` except through the batch size of the few
batch-dependent outputs (see the methods' docs)::

    m = vitfiqa.load("vit.pt", ModelOptions(device="cuda", dtype="float16"))
    score_files(m, paths, config=cfg, run=RunOptions(batch_size=128, workers=8), out="scores.table")

The functions that took these fields as loose keywords (``load(path, device=...)``,
``score_files(..., batch_size=...)``) still accept them for one release, with a DeprecationWarning naming the
new home. This module imports nothing of vitfiqa: the defaults below are read by every layer above it.
"""
from __future__ import annotations

import dataclasses
import operator
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

# The run defaults live here, at the bottom of the package (this module imports nothing of vitfiqa), so the
# loader, the results table, the pipeline, Ray and the CLI all read the same values without importing up.
DEFAULT_BATCH_SIZE = 64
"""Images per scoring / embedding batch when the caller names none: the one default (API wrappers, pipeline,
results table, Ray, loader, data sets, reproduction, CLI) beside the one check below."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image (width x height) decoded by default: 40 MP is ~120 MB as RGB, several times any face photo,
while a decompression bomb (a few kB of PNG that inflates to gigapixels) is refused from its header, before
any pixel is decoded. This limit is the only one: Pillow's own (``PIL.Image.MAX_IMAGE_PIXELS``, which refuses
images above 179 MP and warns above 89 MP by default) is lifted while vitfiqa decodes an image and restored
after, so ``max_pixels=None`` (CLI ``--max-pixels 0``) really decodes an image of any size."""


def check_batch_size(batch_size, allow_none: bool = False) -> None:
    """The one check of a batch size (API, pipeline, results table, Ray, CLI): a positive integer (None where
    the caller allows it: the whole input as one batch)."""
    if batch_size is None and allow_none:
        return
    try:
        ok = not isinstance(batch_size, bool) and operator.index(batch_size) > 0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")


def _from(cls, value, what: str):
    """``value`` as ``cls``: an instance, a mapping of its fields, or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(names)}")
        return cls(**value)
    raise TypeError(f"{what} options must be a {cls.__name__}, a dict or None, got {type(value).__name__}")


def take_deprecated(kwargs: dict, cls, param: str, where: str, stacklevel: int = 3) -> dict:
    """Pop the loose keywords of ``cls``'s fields out of ``kwargs`` (the old signatures, kept for one release),
    warn once for each that it moved into ``param=cls(...)``, and return them as {field: value}."""
    names = {f.name for f in dataclasses.fields(cls)}
    found = {k: kwargs.pop(k) for k in [k for k in kwargs if k in names]}
    for k in found:
        warnings.warn(f"{where}: {k}= is deprecated: pass {param}={cls.__name__}({k}=...)", DeprecationWarning,
                      stacklevel=stacklevel)
    return found


def no_unknown(kwargs: dict, where: str) -> None:
    """A function that took loose option keywords refuses the ones it does not know (one line)."""
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(sorted(kwargs))}")


def resolve_device(device) -> str:
    """A device name checked against this torch build; ``"auto"``: CUDA when it is available, else the CPU."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available in this torch build")
    return device


@dataclass(frozen=True)
class ModelOptions:
    """How a model is loaded and fed. ``None`` means: read it from the model (its recorded input contract, the
    patch grid in its graph, the final LayerNorm its forward applies). ``device`` ``"auto"``: a GPU when there
    is one (on Ray: when the cluster has GPUs), else the CPU. ``dtype`` may also be a ``torch.dtype``."""
    device: str = "cpu"
    dtype: str = "float32"
    image_size: tuple[int, int] | int | None = None
    channel_order: str | None = None          # "rgb" | "bgr"
    normalization: Mapping[str, Any] | None = None
    final_norm: str | None = None             # module path of the final LayerNorm, e.g. "norm", "post_layernorm"

    def __post_init__(self):
        if not isinstance(self.dtype, str):  # a torch.dtype: its name (the one spelling the options carry)
            object.__setattr__(self, "dtype", str(self.dtype).replace("torch.", ""))
        if not isinstance(self.device, str):  # a torch.device
            object.__setattr__(self, "device", str(self.device))

    @classmethod
    def of(cls, value: "ModelOptions | Mapping[str, Any] | None") -> "ModelOptions":
        return _from(cls, value, "model")

    def replace(self, **changes) -> "ModelOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """How a run over many images is executed: batching, decoding, limits, outputs, and how faces are found."""
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None                # decoding threads (or processes, see decode_processes)
    decode_processes: bool | None = None      # None: processes on a GPU, threads on CPU
    prefetch: int = 2                         # batches decoded ahead of the model
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # 0 or None: no limit at all (Pillow's included)
    heatmap_dir: str | os.PathLike | None = None
    heatmap_format: str = "png"               # "png" overlays | "npy" arrays
    overwrite: bool = False                   # start a results table again instead of resuming it
    detect: bool = False                      # find faces with the bundled detector, align, then score
    all_faces: bool = False                   # with detect: one row per face instead of the primary face
    landmarks: str | os.PathLike | None = None  # IJB-C style landmark file: align from it, no detector

    @classmethod
    def of(cls, value: "RunOptions | Mapping[str, Any] | None") -> "RunOptions":
        return _from(cls, value, "run")

    def replace(self, **changes) -> "RunOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`vitfiqa.training.train_vitfiqa` / ``train_recognizer`` train: the schedule, the margin head's
    scale and margin, checkpoints (after every epoch and every ``checkpoint_every`` seconds in
    ``checkpoint_dir``; ``resume`` continues from the latest) and progress output (a tqdm bar, or a ``log``
    line every ``log_every`` steps)."""
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    s: float = 64.0                           # CosFace scale
    m: float = 0.4                            # CosFace margin
    schedule: str = "constant"                # "constant" | "cosine" (linear warm-up, then cosine decay to 0)
    warmup: int = 0                           # warm-up steps of the cosine schedule
    device: str = "cpu"
    checkpoint_dir: str | os.PathLike | None = None
    resume: bool = True
    checkpoint_every: float = 300.0           # seconds between checkpoints inside an epoch
    seed: int = 0
    progress: bool = True
    log_every: int = 50

    @classmethod
    def of(cls, value: "TrainOptions | Mapping[str, Any] | None") -> "TrainOptions":
        return _from(cls, value, "train")

    def replace(self, **changes) -> "TrainOptions":
        return dataclasses.replace(self, **changes)
