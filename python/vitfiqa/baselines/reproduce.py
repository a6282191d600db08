"""The reproduce hook: a quality row ``method = "<baseline or its column>"`` with ``preset`` + ``checkpoint`` (an
official checkpoint) or ``model`` (a TorchScript file), and the method's ``options``; scored over a benchmark
into a cached, resumable results table like the ViT methods' rows."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .registry import REGISTRY, score_columns

log = logging.getLogger("vitfiqa.reproduce")


def is_baseline(method: str | None) -> bool:
    """Whether a quality row's ``method`` names a baseline (or one of its columns)."""
    return method is not None and (method in REGISTRY or method in score_columns())


def check_spec(spec, path: Callable[[str], str]) -> None:
    """Check a baseline quality row (``path`` resolves a config path); raises ValueError with a one-line reason."""
    from .presets import PRESETS

    where = f"quality {spec.name!r} (method {spec.method})"
    method = REGISTRY[score_columns().get(spec.method, spec.method)]
    if (spec.preset is None) == (spec.model is None):
        raise ValueError(f"{where}: give preset + checkpoint (an official checkpoint) or model (a TorchScript file)")
    if spec.preset is not None:
        if spec.preset not in PRESETS:
            raise ValueError(f"{where}: preset must be one of {sorted(PRESETS)}, got {spec.preset!r}")
        if spec.checkpoint is None:
            raise ValueError(f"{where}: preset {spec.preset} needs checkpoint (its official weights file)")
        spec.checkpoint = path(spec.checkpoint)
        if not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(f"{where}: checkpoint file not found: {spec.checkpoint}")
    else:
        if spec.checkpoint is not None:
            raise ValueError(f"{where}: checkpoint goes with preset; a TorchScript model carries its weights")
        spec.model = path(spec.model)
        if not Path(spec.model).is_file():
            raise FileNotFoundError(f"{where}: model file not found: {spec.model}")
    try:
        method.check_options(spec.options)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _file_hash(path: str) -> str:
    """SHA-256 of a weights file (memoised per path, size and modification time)."""
    from ..digest import file_hash

    return file_hash(path)


def qualities(specs, ds, cfg, fingerprint: str, progress: bool) -> dict[str, np.ndarray]:
    """Per-image scores of baseline quality rows on one benchmark (NaN for unreadable images), each row's method
    cached in its own results table (all its columns), resumed after an interruption."""
    from ..results import ScoreTable
    from . import load
    from .run import resolve, run_description, score_batch

    out: dict[str, np.ndarray] = {}
    for spec in specs:
        ms, opts, keys = resolve([spec.method], {score_columns().get(spec.method, spec.method): spec.options})
        model = load(spec.preset or spec.model,
                     cfg.model_options("float32", ds.image_size, channel_order=getattr(spec, "channel_order", None),
                                       normalization=getattr(spec, "normalization", None))
                     .replace(device=getattr(spec, "device", None) or cfg.device),
                     checkpoint=spec.checkpoint)
        run = run_description(model, ms, opts, None, None)
        run.update(benchmark=fingerprint, weights=_file_hash(spec.checkpoint or spec.model), preset=spec.preset)
        key = hashlib.sha256(json.dumps(dict(run=run, batch_size=int(cfg.batch_size)), sort_keys=True,
                                        default=str).encode()).hexdigest()
        table = ScoreTable(Path(cfg.cache) / f"baseline-{key[:24]}.table", paths=ds.keys, keys=keys,
                           batch_size=int(cfg.batch_size), run=run)
        try:
            pending = table.pending_batches()
            if pending:
                todo = np.concatenate([np.arange(s, min(s + cfg.batch_size, len(ds))) for s in pending])
                log.info("qualities %s on %s: %d of %d images to score", spec.name, ds.name, len(todo), len(ds))
                from tqdm.auto import tqdm

                bar = tqdm(total=len(ds), initial=len(ds) - len(todo), desc=f"qualities {spec.name} / {ds.name}",
                           disable=not progress, leave=False)
                for b in ds.iter_batches(cfg.batch_size, workers=cfg.workers, indices=todo):
                    scores = score_batch(model, ms, opts, b.images) if b.images is not None else {}
                    pos = {int(i): j for j, i in enumerate(b.ok)}
                    cols = {"index": b.indices.tolist(), "path": [ds.keys[i] for i in b.indices],
                            "error": [b.errors.get(int(i), "") for i in b.indices]}
                    for k in keys:
                        cols[k] = [float(scores[k][pos[int(i)]]) if int(i) in pos else float("nan") for i in b.indices]
                    table.commit(cols)
                    bar.update(len(b.indices))
                bar.close()
            else:
                log.info("qualities %s on %s: cached", spec.name, ds.name)
            column = spec.method if spec.method in keys else keys[0]
            out[spec.name] = np.asarray(table.columns_dict()[column], dtype=np.float64)
        finally:
            table.close()
    return out
