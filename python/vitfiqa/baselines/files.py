"""Baselines over image files into the package's results table (the CLI's ``vitfiqa score --method serfiq``)
and over a reproduce benchmark (a quality row ``method = "serfiq"``): the same loader, table, resume and
one-bad-image-is-a-skip rule as the ViT methods."""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..options import RunOptions, no_unknown
from .model import BaselineModel
from .run import resolve, run_description, score_batch  # noqa: F401  (re-exported)


def score_files(names, model: BaselineModel, sources: Sequence, *, out: str | os.PathLike | None = None,
                options: Mapping[str, Mapping] | None = None, ids: Sequence[str] | None = None,
                run: RunOptions | Mapping | None = None, **deprecated) -> Iterator[dict[str, list]]:
    """Score image files (or encoded bytes with ``ids``) batch by batch with baselines -> yields each batch's
    columns (index, path, one per score column, error). ``out``: a results table folder, committed batch by batch
    and resumed (:class:`vitfiqa.results.ScoreTable`). An image that cannot be used is a row of NaN with the
    reason in ``error``. ``run``: a :class:`vitfiqa.options.RunOptions` (batch_size, workers, overwrite,
    max_pixels; no heatmaps: the baselines have none); the old keywords (``batch_size=``, ...) still work for one
    release, with a DeprecationWarning."""
    from ..loader import ImageLoader
    from ..pipeline import check_sources, run_options
    from ..results import ScoreTable

    run = run_options(run, deprecated, "vitfiqa.baselines.files.score_files")
    no_unknown(deprecated, "score_files")
    if run.heatmap_dir is not None:
        raise ValueError("the baselines have no heatmaps: RunOptions.heatmap_dir must stay None")
    if run.detect or run.landmarks is not None:
        raise ValueError("the baselines score the images as given: the face stage (detect, landmarks) is the ViT "
                         "methods' (align the faces first)")
    batch_size, workers, overwrite, max_pixels = run.batch_size, run.workers, run.overwrite, run.max_pixels
    ms, opts, keys = resolve(names, options)
    sources, ids, kind = check_sources(sources, ids)
    names_ = ids if ids is not None else sources
    table = None
    if out is not None:
        table = ScoreTable(out, paths=names_, keys=keys, batch_size=batch_size, overwrite=overwrite,
                           run=run_description(model, ms, opts, max_pixels, kind))
    skip = set(table.batch_starts()) - set(table.pending_batches()) if table is not None else ()
    loader = ImageLoader(sources, batch_size, model.image_size, workers=workers, skip=skip, max_pixels=max_pixels,
                         ids=names_)
    try:
        for batch in loader:
            n = len(batch.ids)
            cols: dict[str, Any] = {"index": list(range(batch.start, batch.start + n)), "path": list(batch.ids)}
            errors = dict(batch.errors)
            scores: dict[str, np.ndarray] = {}
            if batch.images is not None:
                scores = score_batch(model, ms, opts, batch.images)
            for k in keys:
                col = [float("nan")] * n
                if scores:
                    for j, pos in enumerate(batch.ok):
                        col[pos] = float(scores[k][j])
                cols[k] = col
            cols["error"] = [errors.get(i, "") for i in range(n)]
            if table is not None:
                table.commit(cols)
            yield cols
    finally:
        if table is not None:
            table.close()
