"""Run and model options: one typed home each, carried whole through the API, pipeline, Ray, reproduce, the
recogniser and the CLI (a function takes the options object, not a dozen of its fields).

``ScoreConfig`` (what the methods compute) lives in :mod:`vitfiqa.config`; ``ModelOptions`` says how a model
is loaded and fed; ``RunOptions`` says how a run over many images is executed. Scores never depend on
``RunOptions`` except through the batch size of the few batch-dependent outputs (see the methods' docs).
"""
from __future__ import annotations

import dataclasses
import operator
import os
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
any pixel is decoded. ``max_pixels=None`` lifts vitfiqa's limit; Pillow's own still applies (it refuses images
above 2 x ``PIL.Image.MAX_IMAGE_PIXELS``, 179 MP by default, and warns above 89 MP)."""


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


@dataclass(frozen=True)
class ModelOptions:
    """How a model is loaded and fed. ``None`` means: read it from the model (its recorded input contract, the
    patch grid in its graph, the final LayerNorm its forward applies)."""
    device: str = "cpu"
    dtype: str = "float32"
    image_size: tuple[int, int] | int | None = None
    channel_order: str | None = None          # "rgb" | "bgr"
    normalization: Mapping[str, Any] | None = None
    final_norm: str | None = None             # module path of the final LayerNorm, e.g. "norm", "post_layernorm"

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
