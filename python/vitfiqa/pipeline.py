"""Streaming scoring of images: the package's one loader (:mod:`vitfiqa.loader`) decodes on worker threads or
processes, the model scores on its device, results go to a results table.

This is the one path from image sources to scores. The CLI, :mod:`vitfiqa.distributed` (each Ray actor runs it
on its share) and ``benchmarks/throughput.py`` all use it, so a data set scored locally and on a cluster is cut
into the same batches and gets the same numbers.

Sources are image file paths, or the encoded bytes of image files (read from a database, an archive, an object
store ...) named by ``ids``: the ids key the results table's rows (its ``path`` column), its resume and the
heatmap files, as paths do for files. Bytes and the files they were read from give the same scores, bit for bit.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Iterator, Sequence

import numpy as np

from .api import QualityModel, QualityResult
from .config import ScoreConfig, check_batch_independent, score_config
from .detect import FACE_COLUMNS, FaceSource
from .loader import ImageBatch, ImageLoader, to_model_input
from .options import DEFAULT_MAX_PIXELS, RunOptions, take_deprecated
from .preprocess import DEFAULT_CHANNEL_ORDER


@dataclass
class ScoredBatch:
    batch: ImageBatch
    result: QualityResult | None
    keys: list[str]  # the score columns (QualityModel.columns), the same for every batch of a run

    def __repr__(self) -> str:
        """A summary: which images, how many scored and skipped, which columns (never whole tensors)."""
        b = self.batch
        return (f"ScoredBatch(images {b.start}..{b.start + len(b.ids) - 1}: {len(b.ok)} scored, {len(b.errors)} "
                f"skipped; columns {', '.join(self.keys)})")

    def columns(self) -> dict[str, list]:
        """Columns in input order: ``index`` (position in the input list), ``path`` (the file's path, or the
        source's id), one float per score key
        (NaN for an image that could not be read) and ``error`` (empty when scored)."""
        n = len(self.batch.ids)
        cols: dict[str, list] = {"index": list(range(self.batch.start, self.batch.start + n)),
                                 "path": list(self.batch.ids)}
        scores: dict = {}
        if self.result is not None:
            scores = self.result.columns()
        for k in self.keys:
            col = [float("nan")] * n
            if k in FACE_COLUMNS:  # the face stage's box, confidence, eye distance and landmarks
                for pos, face in self.batch.faces.items():
                    col[pos] = face.row()[k]
            else:
                for j, pos in enumerate(self.batch.ok):
                    col[pos] = float(scores[k][j])
            cols[k] = col
        cols["error"] = [self.batch.errors.get(i, "") for i in range(n)]
        return cols


HEATMAP_FORMATS = ("png", "npy")

_BYTES = (bytes, bytearray, memoryview)


def check_sources(sources: Sequence, ids: Sequence[str] | None = None) -> tuple[list, list[str] | None, str]:
    """The one check of what scoring takes -> (sources, ids, kind). ``sources``: all file paths (kind
    ``"paths"``) or all encoded image bytes (kind ``"bytes"``); ``ids``: one name per source, required for
    bytes (they key the results table's rows, its resume and the heatmap files), optional for paths (which are
    then their own names). ids must be unique, non-empty strings that are safe relative file names: no NUL,
    not absolute, no ``..`` part (a heatmap is written at ``heatmap_dir/<id>.<method>.<format>``)."""
    if isinstance(sources, (str, os.PathLike, *_BYTES)):
        raise TypeError("sources must be a list of image paths or of encoded image bytes, not a single one")
    sources = list(sources)
    if not sources:
        raise ValueError("no image paths or bytes given")
    if all(isinstance(s, (str, os.PathLike)) for s in sources):
        kind, sources = "paths", [os.fspath(s) for s in sources]
    elif all(isinstance(s, FaceSource) for s in sources):
        kind = "faces"  # the face stage's sources (vitfiqa.detect.face_sources), named by their rows' ids
        if ids is None:
            raise ValueError("face sources need ids= (one row name each, as vitfiqa.detect.face_sources gives)")
    elif all(isinstance(s, _BYTES) for s in sources):
        kind, sources = "bytes", [bytes(s) for s in sources]  # one type, whatever the caller's buffers
        if ids is None:
            raise ValueError("encoded bytes need ids= (one name per image: the rows of the results table, its "
                             "resume and the heatmap files are keyed by them)")
    else:
        kinds = sorted({type(s).__name__ for s in sources})
        raise TypeError(f"sources must be all image paths or all encoded image bytes, got {', '.join(kinds)} (decode "
                        "other images yourself and use QualityModel.score)")
    if ids is None:
        return sources, None, kind
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a list of strings, one per source")
    ids = list(ids)
    if len(ids) != len(sources):
        raise ValueError(f"{len(ids)} ids for {len(sources)} sources")
    seen: set[str] = set()
    for i in ids:
        if not isinstance(i, str):
            raise TypeError(f"ids must be strings, got {type(i).__name__} ({i!r})")
        parts = re.split(r"[\\/]", i)
        if kind == "faces" and i and "\0" not in i:
            pass  # rows named by the face stage after their image (a path, maybe absolute, + "#k")
        elif not i or "\0" in i or i.startswith(("/", "\\")) or PureWindowsPath(i).drive or ".." in parts:
            raise ValueError(f"id {i!r} is not a safe relative name (empty, NUL, absolute, or a '..' part): ids "
                             "also name the heatmap files")
        if i in seen:
            raise ValueError(f"id {i!r} is given twice: ids key the results table's rows, so each must be unique")
        seen.add(i)
    return sources, ids, kind


def heatmap_names(paths: Sequence[str]) -> list[str]:
    """File-name stems for the heatmaps of ``paths``: each path relative to the folder all of them share, so two
    images with the same name in different folders never get the same heatmap file (``a/x.jpg`` and
    ``b/x.jpg`` -> ``a/x.jpg`` and ``b/x.jpg`` under the heatmap folder; the method and format are appended)."""
    full = [os.path.abspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in full])
    except ValueError:  # different drives (Windows): fall back to the position in the list
        return [f"{i:08d}_{os.path.basename(p)}" for i, p in enumerate(full)]
    return [os.path.relpath(p, root) for p in full]


def encode_heatmap(image: np.ndarray, heatmap: np.ndarray, fmt: str) -> bytes:
    """One heatmap file: ``png`` = the heatmap (JET, alpha 0.4) over the model-input image; ``npy`` = the raw
    float32 [h, w] heatmap."""
    import io

    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, np.asarray(heatmap, dtype=np.float32))
    else:
        from PIL import Image

        from .viz import overlay

        Image.fromarray(overlay(image, heatmap)).save(buf, format="PNG")
    return buf.getvalue()


def run_description(model_sha256: str, image_size, dtype, config: ScoreConfig, heatmaps: dict | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS, input_contract: dict | None = None,
                    final_norm: str | None = None, sources: str | None = None, faces: dict | None = None) -> dict:
    """What a results table records about the run that fills it (model digest, input size, channel order and
    normalisation, the final norm named by the user, precision, the whole score config, heatmap output, pixel
    limit, and what the sources are: ``"paths"`` or ``"bytes"``, the kind :func:`check_sources` gives); a
    resume with anything different is refused instead of mixing scores. ``sources`` is left out when None
    (tables keyed by something else, e.g. a benchmark's fingerprint)."""
    contract = input_contract or {}
    run = {"model_sha256": model_sha256, "image_size": list(image_size),
           "channel_order": contract.get("channel_order", DEFAULT_CHANNEL_ORDER),
           "normalization": contract.get("normalization"),
           "dtype": str(dtype).replace("torch.", ""), "config": config.to_dict(),
           "heatmaps": heatmaps, "max_pixels": max_pixels, "final_norm": final_norm}
    if sources is not None:
        run["sources"] = sources
    if faces is not None:
        run["faces"] = faces  # the face stage: detect / all faces / landmark file, and its rules
    return run


def warn_stand_in(model: QualityModel) -> None:
    """The one warning of a run scored with an embedded stand-in (synthetic faces) model."""
    import warnings

    from .demo import STAND_IN_WARNING, is_stand_in

    if is_stand_in(model):
        warnings.warn(STAND_IN_WARNING, UserWarning, stacklevel=3)


def warn_resized(batch: ImageBatch, size) -> None:
    """The one warning of a run that resizes images (not square, or not at the model's size) instead of
    aligning them."""
    import warnings

    warnings.warn(f"images that are not square or not {size[0]}x{size[1]} ({batch.resized} in the batch from index "
                  f"{batch.start}; this warning is given once per run) are resized to "
                  f"{size[0]}x{size[1]}, not aligned: face quality methods expect aligned face crops (align with "
                  "five landmarks, vitfiqa.align, or detect faces first)", UserWarning, stacklevel=3)


def check_model_input(model: QualityModel, config: ScoreConfig | None = None) -> None:
    """The input contract checked against the model before any results table is created: one blank image of the
    contract's size (3 channels) through the model's forward (and the config's methods). A wrong image size or
    channel count is one line here, instead of a failed first batch that leaves a table behind."""
    import torch

    h, w = model.image_size
    blank = torch.zeros(1, 3, h, w, dtype=model.dtype, device=model.device)
    try:
        if config is None:
            model._core.forward(blank)
        else:
            model.scorer(config).score(blank)
    except (RuntimeError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        source = {"argument": "as given", "model record": "from the model's recorded input contract",
                  "patch grid in the graph": "from the patch grid in its graph"}.get(
            model.input_contract["source"].get("image_size"), "")
        raise ValueError(f"the model does not take 3 x {h} x {w} images (the size {source}): {reason}; "
                         "give the model's own input size (image_size=, CLI --image-size)") from None


def run_options(run: RunOptions | dict | None, loose: dict, where: str) -> RunOptions:
    """``run`` (a :class:`vitfiqa.options.RunOptions`, its dict or None) with the old loose keywords of its
    fields (popped from ``loose``, each with a DeprecationWarning) applied on top; checked."""
    changes = take_deprecated(loose, RunOptions, "run", where, stacklevel=4)
    run = RunOptions.of(run)
    run = run.replace(**changes) if changes else run
    check_run_options(run)
    return run


def check_run_options(run: RunOptions) -> None:
    """The checks of a run's options that need no model (one line each)."""
    from .options import check_batch_size

    check_batch_size(run.batch_size)
    if run.heatmap_format not in HEATMAP_FORMATS:
        raise ValueError(f"heatmap_format must be one of {HEATMAP_FORMATS}, not {run.heatmap_format!r}")
    if run.workers is not None and run.workers < 1:
        raise ValueError("workers must be at least 1")


def face_run(run) -> dict | None:
    """What a results table records about a run's face stage (None without one): detect, all_faces, the
    landmark file (name and SHA-256) and the detector's rules (:func:`vitfiqa.detect.face_rules`)."""
    if run is None or not (run.detect or run.landmarks is not None):
        return None
    from .detect import face_rules

    desc = {"detect": bool(run.detect), "all_faces": bool(run.all_faces), **face_rules()}
    if run.landmarks is not None:
        import hashlib

        path = Path(run.landmarks)
        if not path.is_file():
            raise FileNotFoundError(f"landmark file not found: {path}")
        desc["landmarks"] = {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return desc


def with_faces(sources: list, ids: list[str] | None, kind: str, run, workers: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[list, list[str] | None, list[str], str]:
    """The face stage's hook: checked ``sources``/``ids`` (:func:`check_sources`) -> (sources, ids, row names,
    kind). Without a face stage in ``run`` they pass unchanged; with one they become
    :class:`vitfiqa.detect.FaceSource` rows (:func:`vitfiqa.detect.face_sources`)."""
    names = ids if ids is not None else sources
    if face_run(run) is None or kind == "faces":
        return sources, ids, names, kind
    from .detect import face_sources

    srcs, rows = face_sources(sources, names, detect=run.detect, all_faces=run.all_faces,
                              landmarks=run.landmarks, workers=workers, max_pixels=max_pixels)
    return srcs, rows, rows, "faces"


def open_table(model: QualityModel, sources: Sequence, methods: Sequence[str] | str | None, out, *,
               ids: Sequence[str] | None = None, config: ScoreConfig | dict | None = None,
               run: RunOptions | dict | None = None, **score_options):
    """The :class:`vitfiqa.results.ScoreTable` that :func:`score_files` with these arguments fills: created, or
    opened to resume (refused if it was made by a different model, image list, kind of source, batch size,
    config or face stage). ``out`` may also be a table opened before; it is checked against this run.
    ``methods``, ``config`` and ``score_options`` make the score config as in :meth:`QualityModel.score`;
    ``run`` (:class:`vitfiqa.options.RunOptions`) as in :func:`score_files`: its face stage (detect, all_faces,
    landmarks) decides the rows and adds the face columns (an all-faces run detects here to know its rows)."""
    run = run_options(run, score_options, "open_table")
    cfg = score_config(config, methods=methods, **score_options)
    sources, ids, kind = check_sources(sources, ids)
    sources, ids, names, fkind = with_faces(sources, ids, kind, run, max_pixels=run.max_pixels)
    return _table(model, names, _table_kind(sources, kind), cfg, out, batch_size=run.batch_size,
                  overwrite=run.overwrite, heatmap_dir=run.heatmap_dir, heatmap_format=run.heatmap_format,
                  max_pixels=run.max_pixels, faces=_faces_desc(run) if fkind == "faces" else None)


def _table_kind(sources, kind: str) -> str:
    """The kind of source a table records: a face stage's rows record the images they come from."""
    if kind == "faces":
        return "bytes" if isinstance(sources[0].source, _BYTES) else "paths"
    return kind


def _faces_desc(run) -> dict:
    return face_run(_run_options(run)) or {"face_sources": True}


def _run_options(run):
    if run is None:
        return None
    from .options import RunOptions

    return RunOptions.of(run)


def _table(model, names, kind, cfg, out, *, batch_size, overwrite, heatmap_dir, heatmap_format, max_pixels, faces):
    from .results import ScoreTable

    heat = None
    if heatmap_dir is not None:
        heat = {"dir": str(Path(heatmap_dir).resolve()), "format": heatmap_format}
        cfg.heatmaps = True
    keys = model.columns(cfg) + (list(FACE_COLUMNS) if faces is not None else [])
    check_model_input(model, cfg)  # before the table exists: a wrong input size leaves nothing behind
    described = run_description(model.sha256, model.image_size, model.dtype, cfg, heat, max_pixels,
                                {"channel_order": model.channel_order, "normalization": model.normalization},
                                model.final_norm, sources=kind, faces=faces)
    if isinstance(out, ScoreTable):
        out.expect(paths=names, keys=keys, batch_size=batch_size, run=described)
        return out
    return ScoreTable(out, paths=names, keys=keys, batch_size=batch_size, overwrite=overwrite, run=described)


def score_files(model: QualityModel, sources: Sequence, methods: Sequence[str] | str | None = None, *,
                ids: Sequence[str] | None = None, config: ScoreConfig | dict | None = None,
                run: RunOptions | dict | None = None, out: str | os.PathLike | None = None, start: int = 0,
                **score_options) -> Iterator[ScoredBatch]:
    """Score images batch by batch (a generator: results arrive as each batch finishes).

    sources: image file paths, or the encoded bytes of image files with ``ids=`` (one unique name per image,
    see :func:`check_sources`); the rows' ``path`` column holds the path, or the id. An image that cannot be
    used (missing, undecodable, too large) becomes a row of NaN scores with the reason in ``error``.
    out: a results table folder (or a :class:`vitfiqa.results.ScoreTable` from :func:`open_table`): each
    batch is committed to it atomically before it is yielded, and batches it already holds are skipped, so calling again after an
    interruption finishes the job (only the new batches are yielded; ``ScoreTable.open(out).frame()`` or
    :func:`score_frame` give the whole table). ``run.overwrite=True`` starts the table again.

    run: a :class:`vitfiqa.options.RunOptions` (or its dict), how the run is executed. ``batch_size``;
    ``heatmap_dir``: also write each image's heatmap per method there — ``png`` overlays on the model-input
    image (default) or raw ``npy`` arrays (``heatmap_format``) — named after the image's id, else its path
    relative to the folder all inputs share (:func:`heatmap_names`), each file written atomically, before the
    batch is committed. ``workers``: decoding threads, or processes with ``decode_processes=True`` (default:
    processes when the model is on a GPU, which threads cannot keep fed; threads on CPU, where the model is the
    bottleneck); ``prefetch`` batches decoded ahead. ``max_pixels``: images larger than this (width x height,
    read from the header) are skipped with the reason (default :data:`vitfiqa.options.DEFAULT_MAX_PIXELS`;
    None = no limit of vitfiqa's own). The old keywords (``batch_size=``, ``workers=``, ...) still work for
    one release, with a DeprecationWarning.

    ``methods``, ``config`` (a :class:`vitfiqa.ScoreConfig`) and ``score_options`` make the score config as
    in :meth:`QualityModel.score`; it is validated once, before the first batch.
    Scores must not depend on batch mates: EX-FIQA's ``exfiqa.normalization`` must stay ``none`` here;
    normalise data-set-wide with :func:`vitfiqa.fuse_exits` instead.

    The run's face stage: ``detect`` finds faces with the bundled detector and scores each image's primary
    face, aligned to the ArcFace template (``all_faces``: every confident face, one row each, ``<name>#<k>``);
    ``landmarks`` aligns by a landmark file (``name x1 y1 ... x5 y5 score``) instead. Rows then also hold the
    face's box, confidence, inter-eye distance and landmarks (:data:`vitfiqa.detect.FACE_COLUMNS`); "no face
    found" and "face too small" are skips with that reason (see :mod:`vitfiqa.detect`)."""
    run = run_options(run, score_options, "score_files")
    cfg = score_config(config, methods=methods, **score_options)
    check_batch_independent(cfg)
    sources, ids, kind = check_sources(sources, ids)
    user_ids = ids is not None and kind != "faces"
    batch_size, heatmap_format, max_pixels = run.batch_size, run.heatmap_format, run.max_pixels
    sources, ids, names, fkind = with_faces(sources, ids, kind, run, workers=run.workers, max_pixels=max_pixels)
    heat_dir = Path(run.heatmap_dir) if run.heatmap_dir is not None else None
    heat_names = (names if user_ids else heatmap_names(names)) if heat_dir is not None else None
    if heat_dir is not None:
        cfg.heatmaps = True
    elif cfg.heatmaps and out is not None:
        raise ValueError("heatmaps=True with out=: give run=RunOptions(heatmap_dir=...) so the heatmaps are kept "
                         "with the table")
    scorer = model.scorer(cfg)  # validated against the model once, before the first batch
    keys = scorer.columns() + (list(FACE_COLUMNS) if fkind == "faces" else [])
    table = None
    if out is not None:
        if start != 0:
            raise ValueError("start= offsets the index column; a results table (out=) numbers the whole input list")
        table = _table(model, names, _table_kind(sources, fkind), cfg, out, batch_size=batch_size,
                       overwrite=run.overwrite, heatmap_dir=heat_dir, heatmap_format=heatmap_format,
                       max_pixels=max_pixels, faces=_faces_desc(run) if fkind == "faces" else None)
    loader = ImageLoader(sources, batch_size, model.image_size, workers=run.workers, prefetch=run.prefetch,
                         pin_memory=model.device.type == "cuda", start=start,
                         processes=model.device.type == "cuda" if run.decode_processes is None
                         else run.decode_processes,
                         skip=set(table.batch_starts()) - set(table.pending_batches()) if table is not None else (),
                         max_pixels=max_pixels, ids=names)
    # Heatmap files go through one temporary folder under heatmap_dir (same file system, so the rename is
    # atomic), cleared of a killed run's leftovers when a table's lock makes this run the only writer.
    heat_tmp = None
    if heat_dir is not None:
        from .results import clear_tmp_dir

        heat_tmp = clear_tmp_dir(heat_dir / ".vitfiqa-tmp") if table is not None else heat_dir / ".vitfiqa-tmp"
        heat_tmp.mkdir(parents=True, exist_ok=True)
    warn_stand_in(model)
    resize_warned = False
    try:
        for batch in loader:
            result = None
            if batch.resized and not resize_warned:
                warn_resized(batch, model.image_size)
                resize_warned = True
            if batch.images is not None:
                x = model.prepare(to_model_input(batch.images, model), preprocess=False)
                result = QualityResult._from_core(scorer.score(x))
            sb = ScoredBatch(batch, result, keys)
            files = {}
            if heat_dir is not None and result is not None:
                images = batch.images.numpy()
                for meth, hm in result.heatmaps.items():
                    hm = hm.float().cpu().numpy()
                    for j, pos in enumerate(batch.ok):
                        name = heat_names[batch.start - start + pos]
                        files[heat_dir / f"{name}.{meth}.{heatmap_format}"] = encode_heatmap(images[j], hm[j],
                                                                                             heatmap_format)
            if table is not None:
                table.commit(sb.columns(), files, heat_tmp)
            elif files:
                from .results import atomic_write_many

                atomic_write_many(files, heat_tmp)
            yield sb
    finally:
        if table is not None and table is not out:  # a table the caller opened stays theirs to close
            table.close()


def collect_columns(scored: Iterator[ScoredBatch]) -> tuple[dict[str, list], list[str]]:
    """Concatenate the :meth:`ScoredBatch.columns` of a run; also returns its score keys."""
    cols: dict[str, list] = {}
    keys: list[str] = []
    for sb in scored:
        keys = sb.keys
        for k, v in sb.columns().items():
            cols.setdefault(k, []).extend(v)
    return cols, keys


def score_frame(model: QualityModel, sources: Sequence, methods: Sequence[str] | str | None = None, **kwargs):
    """:func:`score_files` collected into a pandas DataFrame (index, path, scores, error), one row per source
    (``path`` holds the file's path, or its id: ``ids=`` is required for encoded bytes).
    With ``out=`` the run goes through that results table (resuming it) and the frame is the whole table."""
    import pandas as pd

    out = kwargs.get("out")
    if out is not None:
        from .results import ScoreTable

        for _ in score_files(model, sources, methods, **kwargs):
            pass
        return out.frame() if isinstance(out, ScoreTable) else ScoreTable.open(out).frame()
    return pd.DataFrame(collect_columns(score_files(model, sources, methods, **kwargs))[0])
