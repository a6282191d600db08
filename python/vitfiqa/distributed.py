"""Scale-out on Ray Data: score an image collection with a pool of actors, one loaded model per actor,
into the same results table as the local path (:class:`vitfiqa.results.ScoreTable`).

>>> from vitfiqa.distributed import score_with_ray
>>> frame = score_with_ray("vit.pt", paths, "scores.table", config=vitfiqa.ScoreConfig(methods=["attn", "vitnt"]))
>>> frame = score_with_ray("vit.pt", encoded, "scores.table", ids=keys, methods="attn")  # bytes from a database

The input list is cut into batches exactly as the local path cuts it (``sources[i:i+batch_size]``), and each
actor runs the local pipeline (:func:`vitfiqa.pipeline.score_files`) on whole batches, so a data set scored on
a cluster gets the same scores as on one machine, bit for bit on the same hardware and thread count.
The model travels once through Ray's object store as bytes, so only the driver needs the model file. Image
paths must be readable from every node (a shared file system); relative ones are made absolute on the driver.
Encoded image bytes (with ``ids``, as in :func:`vitfiqa.pipeline.score_files`) travel in the Ray Data rows
themselves, so no node needs the files.
Results come back to the driver, which commits them to the results table as they arrive (whole batches,
atomically); a re-run skips the batches already committed (``overwrite=True`` starts again), and a table
started locally can be finished on Ray and the other way round.

Needs ``pip install 'vitfiqa[ray]'``.
"""
from __future__ import annotations

import itertools
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from .options import DEFAULT_MAX_PIXELS, ModelOptions, RunOptions, take_deprecated

log = logging.getLogger("vitfiqa")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("vitfiqa.distributed needs Ray Data: pip install 'vitfiqa[ray]'") from None
    return ray


@contextmanager
def _ray_session(address: str | None, num_cpus: int | None):
    """Ray, started here (and shut down on leaving) unless the caller already started it."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _actor_plan(ray, device: str | None, num_actors: int | None, cpus_per_actor: float | None):
    """(device, use_gpu, num_actors, cpus_per_actor) for the cluster: device None or "auto" takes one GPU per
    actor when the cluster has GPUs; on GPUs an actor sees its own as cuda:0 (CUDA_VISIBLE_DEVICES)."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if device in (None, "auto"):
        device = "cuda" if gpus > 0 else "cpu"
    use_gpu = device.startswith("cuda")
    if use_gpu and gpus == 0:
        raise RuntimeError("device='cuda' but the Ray cluster has no GPUs")
    if use_gpu:
        device = "cuda"
        num_actors = num_actors or gpus
        cpus_per_actor = cpus_per_actor or max(1.0, min(8.0, cpus // max(num_actors, 1)))
    else:
        cpus_per_actor = cpus_per_actor or (2.0 if cpus >= 4 else 1.0)
        num_actors = num_actors or max(1, int(cpus // cpus_per_actor))
    return device, use_gpu, num_actors, cpus_per_actor


class _Scorer:
    """Ray Data actor: loads the model once, then scores whole batches (one input row = one batch: its indices,
    sources and ids). named: the user gave ids (else the sources, paths, are their own names)."""

    def __init__(self, model_ref, model: ModelOptions, config: dict, run: RunOptions, torch_threads, named):
        import ray
        import torch

        from .api import QualityModel
        from .config import ScoreConfig

        if torch_threads:
            torch.set_num_threads(torch_threads)
        import warnings

        warnings.filterwarnings("ignore", message="the embedded stand-in")  # the driver gave it, once
        self.model = QualityModel(ray.get(model_ref[0]), model)
        self.config = ScoreConfig.from_dict(config)  # travels as its dict: the whole config, field for field
        self.run = run
        self.named = named

    def __call__(self, batch) -> dict:
        from .pipeline import collect_columns, score_files

        # Rows arrive as an Arrow table: lists of str or binary come out exactly as they went in (numpy batches
        # would be free to turn a column of bytes into fixed-width arrays, which drop trailing NUL bytes).
        rows = list(zip(batch["indices"].to_pylist(), batch["sources"].to_pylist(), batch["ids"].to_pylist()))
        if "faces" in batch.column_names:  # a face stage: each source comes with its face (or none) and reason
            from .detect import FaceSource

            rows = [(idx, [FaceSource.from_record(s, f, r) for s, f, r in zip(ss, ff, rr)], ii)
                    for (idx, ss, ii), ff, rr in zip(rows, batch["faces"].to_pylist(), batch["reasons"].to_pylist())]
        # Each row is one batch of the input; runs of equal-sized rows are scored as one stream cut at the same
        # places, so decoding of the next batch overlaps this one's scoring and every image keeps its batch mates.
        indices: list[int] = []
        cols: dict[str, list] = {}
        keys: list[str] = []
        for size, run in itertools.groupby(rows, key=lambda r: len(r[0])):
            run = list(run)
            indices += [i for idx, _, _ in run for i in idx]
            sources = [s for _, ss, _ in run for s in ss]
            ids = [i for _, _, ii in run for i in ii] if self.named else None
            part, keys = collect_columns(score_files(self.model, sources, ids=ids, config=self.config,
                                                     run=self.run.replace(batch_size=size)))
            for k, v in part.items():
                cols.setdefault(k, []).extend(v)
        out = {"index": np.asarray(indices, dtype=np.int64), "path": np.asarray(cols["path"], dtype=object)}
        out.update({k: np.asarray(cols[k], dtype=np.float64) for k in keys})
        out["error"] = np.asarray(cols["error"], dtype=object)
        return out


def score_with_ray(model, sources: Sequence, out_dir: str | os.PathLike,
                   methods: Sequence[str] | str | None = None, *, ids: Sequence[str] | None = None, config=None,
                   run: RunOptions | dict | None = None, model_options: ModelOptions | dict | None = None,
                   address: str | None = None, num_actors: int | None = None, cpus_per_actor: float | None = None,
                   num_cpus: int | None = None, progress: bool = True, checkpoint=None, **score_options):
    """Score ``sources`` with ``model`` (anything :func:`vitfiqa.load` takes, ``checkpoint`` with a preset name;
    it becomes TorchScript bytes once, on the driver, which the actors get) on a Ray cluster into the results table ``out_dir`` (created, or resumed when it holds
    this run's batches); returns the whole table as a pandas DataFrame (index, path, scores, error) in input
    order.

    sources / ids: image file paths (readable on every node), or encoded image bytes with ``ids`` (they travel
    in the Ray Data rows), as :func:`vitfiqa.pipeline.score_files` takes them; the same table either way.
    run: a :class:`vitfiqa.options.RunOptions` (or its dict), as :func:`vitfiqa.pipeline.score_files` takes
    it (no heatmaps on Ray); ``workers`` are decoding threads (processes with ``decode_processes``, the default
    on GPUs) per actor (default: its CPUs). model_options: a :class:`vitfiqa.options.ModelOptions` (or its
    dict), as :func:`vitfiqa.load` takes it; the driver resolves the input contract once and every actor uses
    the same. Its device ``"auto"`` (the default here when no model options are given) uses one GPU per actor
    when the cluster has GPUs (one actor per GPU), else CPUs; ``"cpu"``/``"cuda"`` force it; dtype
    ``float16`` halves GPU memory traffic.
    address: ``None`` joins the Ray already initialised in this process, else starts a local one (with
    ``num_cpus``); ``"auto"`` or ``"ray://host:port"`` joins that cluster.
    num_actors / cpus_per_actor: the actor pool (default: per GPU; else one actor per 2 CPUs, 1 on tiny
    clusters).
    The run's face stage (``detect``, ``all_faces``, ``landmarks``) is applied as in
    :func:`vitfiqa.pipeline.score_files`: the driver decides the rows (an all-faces run detects there first), the
    actors detect / align while decoding.
    methods, config (a :class:`vitfiqa.ScoreConfig`), score_options: the score config as in
    :meth:`vitfiqa.QualityModel.score`, carried whole to every actor (no heatmaps; EX-FIQA exit normalisation
    stays 'none', fuse data-set-wide with :func:`vitfiqa.fuse_exits`).
    The old keywords (``batch_size=``, ``device=``, ...) still work for one release, with a DeprecationWarning.
    """
    from .config import check_batch_independent, score_config
    from .detect import FACE_COLUMNS
    from .pipeline import (_faces_desc, _table_kind, check_model_input, check_sources, run_description, run_options,
                           warn_stand_in, with_faces)
    from .results import ScoreTable

    model_changes = take_deprecated(score_options, ModelOptions, "model_options", "score_with_ray")
    if model_changes.get("device", "") is None:  # the old default: GPUs when the cluster has them
        model_changes["device"] = "auto"
    model_options = (ModelOptions(device="auto") if model_options is None else
                     ModelOptions.of(model_options)).replace(**model_changes)
    run = run_options(run, score_options, "score_with_ray")
    cfg = score_config(config, methods=methods, **score_options)
    check_batch_independent(cfg)  # also fails on unknown methods, before anything is loaded
    if num_actors is not None and num_actors < 1:
        raise ValueError("num_actors must be at least 1")
    if cfg.heatmaps or cfg.return_captures or run.heatmap_dir is not None:
        raise ValueError("heatmaps and captures are not collected through Ray; use QualityModel.score locally")
    sources, ids, kind = check_sources(sources, ids)
    if kind == "paths":
        # Workers do not share the driver's working directory: relative paths are resolved here (without ids,
        # the `path` column holds the absolute paths).
        sources = [os.path.abspath(p) for p in sources]
    sources, ids, names, fkind = with_faces(sources, ids, kind, run, workers=run.workers, max_pixels=run.max_pixels)
    faces = _faces_desc(run) if fkind == "faces" else None
    # Any model vitfiqa.load takes (vitfiqa.sources) becomes TorchScript bytes once, here. Load and score one
    # blank image here first: a corrupt file, a model without attention, a wrong input size or a method the
    # model cannot serve fails now, with vitfiqa's own message, not later inside every actor.
    from .api import _load

    probe, src = _load(model, model_options.replace(device="cpu", dtype="float32"), checkpoint=checkpoint)
    model_bytes = src.model if isinstance(src.model, bytes) else Path(src.model).read_bytes()
    # every actor gets the resolved input contract (and the final norm, as named or as a transformers / timm
    # route found it), so all of them (and a resume) feed the model alike
    model_options = model_options.replace(image_size=probe.image_size, channel_order=probe.channel_order,
                                          normalization=probe.normalization, final_norm=probe.final_norm)
    check_model_input(probe, cfg)
    warn_stand_in(probe)  # once, here
    keys = probe.columns(cfg) + (list(FACE_COLUMNS) if faces is not None else [])
    described = run_description(probe.sha256, probe.image_size, model_options.dtype, cfg, max_pixels=run.max_pixels,
                                input_contract=dict(channel_order=probe.channel_order,
                                                    normalization=probe.normalization),
                                final_norm=model_options.final_norm, sources=_table_kind(sources, fkind),
                                faces=faces)
    del probe

    with ScoreTable(out_dir, paths=names, keys=keys, batch_size=run.batch_size, run=described,
                    overwrite=run.overwrite) as table:
        pending = table.pending_batches()
        if table.n_done:
            log.info("resuming: %d of %d images already in %s", table.n_done, len(names), out_dir)
        if pending:
            with _ray_session(address, num_cpus) as ray:
                _run(ray, model_bytes, table, sources, ids is not None, pending, cfg.to_dict(), run, model_options,
                     num_actors, cpus_per_actor, progress)
        return table.frame()


def _run(ray, model_bytes, table, sources, named, pending, config: dict, run: RunOptions, model: ModelOptions,
         num_actors, cpus_per_actor, progress) -> None:
    device, use_gpu, num_actors, cpus_per_actor = _actor_plan(ray, model.device, num_actors, cpus_per_actor)
    threads = max(1, int(cpus_per_actor))

    b = table.batch_size
    rows = [{"indices": list(range(s, min(s + b, table.n_images))), "sources": sources[s:s + b],
             "ids": table.paths[s:s + b]} for s in pending]
    if sources and hasattr(sources[0], "to_record"):  # face stage: plain values travel, the actor rebuilds them
        for row in rows:
            recs = [f.to_record() for f in row["sources"]]
            row["sources"] = [r["source"] for r in recs]
            row["faces"] = [r["face"] for r in recs]
            row["reasons"] = [r["reason"] for r in recs]
        named = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    model_ref = [ray.put(model_bytes)]  # in a list, so the actor receives the reference and fetches it once
    # A few batches per actor call, so an actor decodes the next batch while it scores the current one.
    per_call = 4
    blocks = -(-len(rows) // per_call)
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        _Scorer, batch_size=per_call, batch_format="pyarrow", concurrency=min(num_actors, blocks),
        num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs=dict(model_ref=model_ref, model=model.replace(device=device), config=config,
                                   run=run.replace(workers=run.workers or threads, overwrite=False),
                                   torch_threads=threads, named=named))
    # The driver is the table's only writer: rows are committed as soon as their batch is complete (Ray may
    # cut its output blocks anywhere), so a killed run loses at most the batches in flight.
    partial: dict[int, dict[str, list]] = {}
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ready: dict[str, list] = {c: [] for c in table.columns}
            for j, i in enumerate(block["index"].tolist()):
                s = i - i % b
                buf = partial.setdefault(s, {c: [] for c in table.columns})
                for c in table.columns:
                    v = block[c][j]
                    buf[c].append(int(v) if c == "index" else str(v) if c in ("path", "error") else float(v))
                if len(buf["index"]) == min(b, table.n_images - s):
                    del partial[s]
                    for c in table.columns:
                        ready[c] += buf[c]
            if ready["index"]:
                table.commit(ready)
    except ray.exceptions.RayError as exc:
        cause = str(getattr(exc, "cause", None) or exc).strip().splitlines()
        raise RuntimeError(f"scoring failed on a Ray worker: {cause[-1] if cause else type(exc).__name__}") from exc


# -- embeddings ------------------------------------------------------------------------------------------------

class _Embedder:
    """Ray actor: loads a recognizer once, then embeds whole batches of sources (paths, encoded bytes or
    aligned :class:`vitfiqa.align.FaceCrop`, which travel as they are: the landmarks with the path)."""

    def __init__(self, model_ref, options: dict, image_size, channel_swap: bool, max_pixels, torch_threads):
        import ray
        import torch

        from .recognizer import Recognizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.rec = Recognizer(ray.get(model_ref[0]), image_size=image_size, **options)
        self.size = tuple(image_size)
        self.swap = channel_swap
        self.max_pixels = max_pixels

    def embed(self, indices, sources):
        from .loader import decode_items

        images, ok, errors = decode_items(sources, self.size, self.max_pixels)
        if self.swap:  # a channel-swapped benchmark (ImageSet.channel_swap), as ImageSet.iter_batches reads it
            images = np.ascontiguousarray(images[..., ::-1])
        indices = np.asarray(indices, dtype=np.int64)
        emb = self.rec.embed(images) if ok else None
        return indices, indices[ok], emb, {int(indices[p]): reason for p, reason in errors.items()}


def embed_with_ray(model: str | os.PathLike | bytes, sources: Sequence, batches: Sequence[Sequence[int]], *,
                   image_size: tuple[int, int], channel_swap: bool = False, address: str | None = None,
                   num_actors: int | None = None, cpus_per_actor: float | None = None, num_cpus: int | None = None,
                   device: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, **recognizer_options):
    """Embeddings of ``sources`` on a Ray cluster, batch by batch: yields ``(indices, ok, embeddings of ok or
    None, {index: reason})`` for each of ``batches`` (lists of positions in ``sources``) as it finishes, in any
    order. Each actor runs a :class:`vitfiqa.recognizer.Recognizer` (``recognizer_options``: dtype,
    channel_order, mean, std, flip, output) on whole batches, decoded as :class:`vitfiqa.eval.ImageSet` decodes
    them (``channel_swap`` reverses the decoded channels), so the same batches give the same embeddings as
    :func:`vitfiqa.eval.extract_embeddings` on the same hardware and thread count. The caller stores each batch
    (``vitfiqa reproduce`` writes it to its resumable embedding cache, so an interrupted run continues with
    the batches still to do). Sources travel in the task arguments: paths must be readable on every node.

    address / num_cpus: as :func:`score_with_ray` (a Ray already initialised in this process is joined; one
    started here is shut down when the generator finishes). device: ``None`` uses one GPU per actor when the
    cluster has GPUs, else CPUs. num_actors / cpus_per_actor: the actor pool (default as score_with_ray)."""
    from .recognizer import Recognizer

    if num_actors is not None and num_actors < 1:
        raise ValueError("num_actors must be at least 1")
    if isinstance(model, (bytes, bytearray)):
        model_bytes = bytes(model)
    else:
        if not Path(model).is_file():
            raise FileNotFoundError(f"recognizer model file not found: {model}")
        model_bytes = Path(model).read_bytes()
    batches = [list(map(int, b)) for b in batches if len(b)]
    if not batches:
        return
    # load it here first: a corrupt file or a bad option fails now, with vitfiqa's message, not in every actor
    Recognizer(model_bytes, image_size=image_size, **recognizer_options)
    from .align import FaceCrop

    def absolute(s):  # workers do not share the driver's working directory
        if isinstance(s, FaceCrop) and isinstance(s.source, (str, os.PathLike)):
            return FaceCrop(os.path.abspath(s.source), s.landmarks)
        return os.path.abspath(s) if isinstance(s, (str, os.PathLike)) else s

    sources = [absolute(s) for s in sources]
    with _ray_session(address, num_cpus) as ray:
        from ray.util import ActorPool

        _, use_gpu, num_actors, cpus_per_actor = _actor_plan(ray, device, num_actors, cpus_per_actor)
        num_actors = min(num_actors, len(batches))
        actor = ray.remote(num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else 0)(_Embedder)
        model_ref = [ray.put(model_bytes)]
        options = dict(recognizer_options, device="cuda" if use_gpu else "cpu")
        pool = ActorPool([actor.remote(model_ref, options, tuple(image_size), channel_swap, max_pixels,
                                                max(1, int(cpus_per_actor))) for _ in range(num_actors)])
        work = ((b, [sources[i] for i in b]) for b in batches)
        try:
            yield from pool.map_unordered(lambda a, job: a.embed.remote(*job), work)
        except ray.exceptions.RayError as exc:
            cause = str(getattr(exc, "cause", None) or exc).strip().splitlines()
            raise RuntimeError(f"embedding failed on a Ray worker: {cause[-1] if cause else type(exc).__name__}"
                               ) from exc
