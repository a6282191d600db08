"""What a baseline run is: the methods, their checked options and columns, the run description a results table
records, and one batch scored (shared by the file scoring and the reproduce hook)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .model import BaselineModel
from .registry import REGISTRY


def resolve(names, options: Mapping[str, Mapping] | None = None) -> tuple[list[str], dict[str, dict], list[str]]:
    """-> (baselines, their checked options, the columns they write)."""
    from . import _methods, columns

    ms = _methods(names)
    unknown = set(options or {}) - set(ms)
    if unknown:
        raise TypeError(f"options for methods not scored: {sorted(unknown)}")
    opts = {m: REGISTRY[m].check_options(dict((options or {}).get(m, {}))) for m in ms}
    return ms, opts, columns(ms)


def run_description(model: BaselineModel, methods: Sequence[str], options: Mapping, max_pixels, sources: str | None
                    ) -> dict:
    """What a results table of baseline scores records about its run; a resume with anything different is
    refused."""
    run = {"baselines": list(methods), "options": {m: dict(options[m]) for m in methods},
           "model_sha256": model.sha256, "image_size": list(model.image_size), "channel_order": model.channel_order,
           "normalization": model.normalization, "dtype": "float32", "max_pixels": max_pixels}
    if sources is not None:
        run["sources"] = sources
    return run


def score_batch(model: BaselineModel, methods: Sequence[str], options: Mapping, images) -> dict[str, np.ndarray]:
    x = model.prepare(images)
    out: dict[str, np.ndarray] = {}
    for m in methods:
        for col, v in REGISTRY[m].compute(model, x, **options[m]).items():
            out[col] = v.detach().cpu().double().numpy()
    return out
