"""Reproduce a paper's table in one command: ``vitfiqa reproduce CONFIG.toml`` or :func:`reproduce`.

A config names benchmarks (any mix of insightface ``.bin``, LFW/XQLFW pairs files, CR-FIQA lists, Adience
folds, IJB-C 1:1 templates), recognizers (any TorchScript model, CNN or ViT, used for embeddings only; or
precomputed embeddings) and quality sources (vitfiqa methods on a model, or per-image score files of other
methods: the competitor rows). For every benchmark x recognizer it computes comparison scores, for every
quality source the pair qualities, and the pAUC-EDC at each FMR; out come one table in the papers' layout
(rows = FIQA methods, columns = benchmark x recognizer, one block per FMR, best in bold) as Markdown, LaTeX and
CSV, an EDC plot grid (PNG and PDF) and the resolved config with package versions.

Embeddings and qualities are cached per (model, benchmark, options), keyed by content hashes (model file,
benchmark files, options), as each batch finishes: qualities in the package's results table
(:class:`vitfiqa.results.ScoreTable`), embeddings in a memory-mapped array with an atomically replaced status
file. A re-run after an interruption continues where it stopped, and a changed config recomputes only what
changed (a changed ``batch_size`` starts new quality tables). A benchmark whose files are missing or corrupt is reported and
skipped; the rest of the table is still produced.

Example config (paths are relative to the config file)::

    out = "table"
    fmrs = [1e-3, 1e-4]          # default
    variant = "refit"            # EDC variant, passed to vitfiqa.eval.evaluate
    limit = 0.3                  # pAUC discard limit

    [[benchmarks]]
    name = "LFW"
    type = "bin"                 # bin | pairs | pair_list | adience | ijbc
    path = "data/lfw.bin"

    [[benchmarks]]
    name = "IJB-C"
    type = "ijbc"
    root = "IJB_release/IJBC"    # meta/ + loose_crop/, aligned by ijbc_name_5pts_score.txt

    [[benchmarks]]
    name = "XQLFW"
    type = "pair_list"           # CR-FIQA's own prepared folder (feature_extraction/extract_xqlfw.py output):
    data_dir = "data"            # its files are channel-swapped, prepared = "crfiqa" swaps them back on read
    list_dir = "data/quality_data/XQLFW"
    prepared = "crfiqa"

    [[recognizers]]
    name = "ArcFace"
    model = "arcface_r100.pt"    # TorchScript; or: embeddings = { LFW = "lfw_arcface.npy" }
    flip = "concat"              # concat (CR-FIQA) | sum (insightface IJB) | none
                                 # channel_order: the model's input contract, else rgb (what the official
                                 # pipeline feeds from the release files)

    [[recognizers]]
    name = "AdaFace ViT-B"
    preset = "cvlface_vit_b"     # an official architecture (vitfiqa.models.PRESETS / RECOGNIZERS) ...
    checkpoint = "model.pt"      # ... with its official checkpoint, instead of model

    [[qualities]]
    name = "ATTN-FIQA"
    method = "attn"
    model = "vit_b_face.pt"
    options = { attn.block = -1 }    # score config fields, dotted (vitfiqa.ScoreConfig.fields())
    final_norm = "norm"              # model options (vitfiqa.options.ModelOptions fields): channel_order,
                                     # normalization, image_size, final_norm, device, dtype

    [[qualities]]
    name = "EX-FIQA"
    method = "exfiqa"                # the paper's fused score, exfiqa_FW (exfiqa_F: the mean of the exits)
    model = "vitfiqa_token.pt"

    [[qualities]]
    name = "CR-FIQA(L)"
    scores = { LFW = "scores/CRFIQAL_lfw.txt", "IJB-C" = "scores/CRFIQAL_IJBC.parquet" }

A score file's keys match the benchmark's image keys (see :func:`_match_keys`), CR-FIQA's own
``quality_data/<ds>/images/<file>`` paths included; a file that cannot be read, or lacks a score for an image
of the benchmark, drops that row for that benchmark (the reason, naming the file, is in the log and in
``resolved_config.json``'s notes), never the benchmark.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..config import methods as registered_methods, score_columns
from ..digest import file_hash
from ..options import DEFAULT_BATCH_SIZE, ModelOptions, RunOptions
from ..preprocess import DEFAULT_IMAGE_SIZE
from .datasets import (CorruptEntry, ImageSet, aggregate_templates, check_prepared, extract_embeddings, load_adience,
                       load_bin, load_ijbc, load_lfw_pairs, load_pair_list, template_quality)
from .report import evaluate, plot_edc_grid, to_csv, to_latex, to_markdown
from .scores import masked_comparison_scores

log = logging.getLogger("vitfiqa.reproduce")


class ConfigError(ValueError):
    """The reproduce config is invalid (one-line reason)."""


# -- the config ------------------------------------------------------------------------------------------------

# type -> (loader, path-valued options, allowed options; the required ones are listed in BENCHMARK_REQUIRED)
BENCHMARK_TYPES: dict[str, tuple[Callable[..., ImageSet], tuple[str, ...], tuple[str, ...]]] = {
    "bin": (lambda o: load_bin(o["path"], image_size=o["image_size"]), ("path",), ("path",)),
    "pairs": (lambda o: load_lfw_pairs(o["root"], o["pairs"], ext=o.get("ext", "jpg"), image_size=o["image_size"]),
              ("root", "pairs"), ("root", "pairs", "ext")),
    "pair_list": (lambda o: load_pair_list(o["data_dir"], o.get("list_dir"), ids=o.get("ids", "auto"),
                                           image_size=o["image_size"], prepared=o.get("prepared")),
                  ("data_dir", "list_dir"), ("data_dir", "list_dir", "ids", "prepared")),
    "adience": (lambda o: load_adience(o["root"], o.get("folds"), faces=o.get("faces", "aligned"),
                                       image_size=o["image_size"]),
                ("root", "folds"), ("root", "folds", "faces")),
    "ijbc": (lambda o: load_ijbc(o["root"], align=o.get("align", True), prefix=o.get("prefix", "ijbc"),
                                 image_size=o["image_size"]),
             ("root",), ("root", "align", "prefix")),
}
BENCHMARK_REQUIRED = {"bin": ("path",), "pairs": ("root", "pairs"), "pair_list": ("data_dir",), "adience": ("root",),
                      "ijbc": ("root",)}
TOP_LEVEL = {"out", "cache", "fmrs", "variant", "limit", "batch_size", "device", "workers", "image_size", "ray",
             "benchmarks", "recognizers", "qualities", "pauc_integration", "pauc_normalize"}


@dataclass
class BenchmarkSpec:
    name: str
    type: str
    options: dict


@dataclass
class RecognizerSpec:
    name: str
    model: str | None = None
    embeddings: dict[str, str] = field(default_factory=dict)
    channel_order: str | None = None   # None: the model's input contract, else rgb
    mean: Any = None                   # None: the model's input contract, else 0.5
    std: Any = None
    flip: str = "concat"
    output: int = 0
    dtype: str = "float32"
    detector_score_weighting: bool = False
    preset: str | None = None          # with checkpoint: an official architecture instead of a TorchScript model
    checkpoint: str | None = None


# A method's name in a config -> the score column the papers' tables report for it. EX-FIQA scores every exit
# (``exfiqa_F``: mean of the exits, ``exfiqa_FW``: depth-weighted sum); its paper reports the fused FW score
# (EX-FIQA-FW, e.g. 6.36 x 1e-3 on IJB-C at FMR 1e-3 with the token model), so ``method = "exfiqa"`` is that.
METHOD_ALIASES = {"exfiqa": "exfiqa_FW"}

# The vitfiqa.options.ModelOptions fields a method row may set (dtype above; device: the run's by default).
QUALITY_MODEL_OPTIONS = ("device", "image_size", "channel_order", "normalization", "final_norm")


@dataclass
class QualitySpec:
    name: str
    method: str | None = None
    model: str | None = None
    options: dict = field(default_factory=dict)
    dtype: str = "float32"
    scores: dict[str, str] = field(default_factory=dict)
    column: str | None = None
    key: str | None = None
    higher_is_better: bool = True
    preset: str | None = None          # with checkpoint: a baseline's network (vitfiqa.baselines.PRESETS) or
                                       # an official ViT (vitfiqa.models.PRESETS), instead of model
    checkpoint: str | None = None
    # how the model is loaded and fed (vitfiqa.options.ModelOptions); None: the model's input contract, the
    # run's device and the benchmark's image size
    device: str | None = None
    image_size: Any = None
    channel_order: str | None = None
    normalization: dict | None = None
    final_norm: str | None = None

    def model_options(self, cfg: "Config") -> ModelOptions:
        """This row's :class:`vitfiqa.options.ModelOptions` (device and image size filled in from the run)."""
        size = self.image_size if self.image_size is not None else cfg.image_size
        return ModelOptions(device=self.device or cfg.device, dtype=self.dtype,
                            image_size=(size, size) if isinstance(size, int) else tuple(size),
                            channel_order=self.channel_order, normalization=self.normalization,
                            final_norm=self.final_norm)

    def input_key(self) -> dict:
        """What the scores depend on beyond the model file and the score config (part of the cache keys)."""
        return {k: getattr(self, k) for k in QUALITY_MODEL_OPTIONS if k != "device" and getattr(self, k) is not None}


@dataclass
class Config:
    benchmarks: list[BenchmarkSpec]
    recognizers: list[RecognizerSpec]
    qualities: list[QualitySpec]
    out: str = "vitfiqa-reproduce"
    cache: str | None = None
    fmrs: list[float] = field(default_factory=lambda: [1e-3, 1e-4])
    variant: str = "refit"
    limit: float = 0.3
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    workers: int | None = None
    image_size: int = DEFAULT_IMAGE_SIZE[0]  # square side of the benchmark images
    pauc_integration: str | None = None
    pauc_normalize: str | None = None
    ray: str | None = None          # embeddings and vitfiqa qualities on Ray: "local" (this process's or a new
                                    # local Ray), "auto" or "ray://host:port"; qualities of image files only
                                    # (encoded bytes and aligned crops are scored locally), embeddings of any

    def run_options(self) -> RunOptions:
        """How the config's runs over a benchmark are executed (its ``batch_size`` and ``workers``)."""
        return RunOptions(batch_size=int(self.batch_size), workers=self.workers)

    def model_options(self, dtype: str, image_size: tuple[int, int], **contract) -> ModelOptions:
        """How a model of the config is loaded (its ``device``; a spec's dtype; the benchmark's image size)."""
        return ModelOptions(device=self.device, dtype=dtype, image_size=image_size, **contract)


def _fields(cls) -> set[str]:
    return set(cls.__dataclass_fields__)


def _path(base: Path, p) -> str:
    if not isinstance(p, str) or not p:
        raise ConfigError(f"expected a path string, got {p!r}")
    return str(Path(p) if os.path.isabs(p) else base / p)


def load_config(config: str | os.PathLike | Mapping, base: str | os.PathLike | None = None) -> Config:
    """Parse and check a config (TOML file path or a dict with the same layout). Relative paths are resolved
    against the config file's folder (or ``base``, default the working directory, for a dict)."""
    if isinstance(config, Mapping):
        raw = dict(config)
        base = Path(base or ".")
    else:
        import tomllib

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = Path(base) if base is not None else path.parent
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    for key in ("benchmarks", "recognizers", "qualities"):
        if not raw.get(key) or not isinstance(raw[key], list):
            raise ConfigError(f"the config needs at least one [[{key}]] entry")

    def named(entries, what):
        names = []
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
                raise ConfigError(f"every [[{what}]] entry needs a name")
            names.append(e["name"])
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"duplicate {what} names {sorted(dup)}")
        return names

    bench_names = named(raw["benchmarks"], "benchmarks")
    named(raw["recognizers"], "recognizers")
    named(raw["qualities"], "qualities")

    benchmarks = []
    for e in raw["benchmarks"]:
        kind = e.get("type")
        if kind not in BENCHMARK_TYPES:
            raise ConfigError(f"benchmark {e['name']!r}: type must be one of {sorted(BENCHMARK_TYPES)}, got {kind!r}")
        _, path_keys, allowed = BENCHMARK_TYPES[kind]
        opts = {k: v for k, v in e.items() if k not in ("name", "type")}
        bad = set(opts) - set(allowed)
        if bad:
            raise ConfigError(f"benchmark {e['name']!r} ({kind}): unknown options {sorted(bad)}; allowed {list(allowed)}")
        missing = [k for k in BENCHMARK_REQUIRED[kind] if k not in opts]
        if missing:
            raise ConfigError(f"benchmark {e['name']!r} ({kind}): missing {missing[0]!r}")
        for k in path_keys:
            if k in opts:
                opts[k] = [_path(base, p) for p in opts[k]] if isinstance(opts[k], list) else _path(base, opts[k])
        try:
            check_prepared(opts.get("prepared"))
        except ValueError as exc:
            raise ConfigError(f"benchmark {e['name']!r} ({kind}): {exc}") from None
        benchmarks.append(BenchmarkSpec(e["name"], kind, opts))

    def make_spec(cls, e, what, files_key):
        """A recognizer/quality entry -> its spec: unknown options refused, per-benchmark files resolved."""
        bad = set(e) - _fields(cls)
        if bad:
            raise ConfigError(f"{what} {e['name']!r}: unknown options {sorted(bad)}")
        return cls(**{**e, files_key: per_benchmark_files(e, files_key, what)})

    def model_file(spec, what):
        path = _path(base, spec.model)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {spec.name!r}: model file not found: {path}")
        return path

    def preset_entry(spec, what):
        """``preset`` + ``checkpoint``: an official architecture with its weights (exported to TorchScript in the
        cache when the run starts, see :func:`export_presets`)."""
        from ..sources import preset_names

        if spec.preset is None and spec.checkpoint is None:
            return
        if spec.preset is None or spec.checkpoint is None or spec.model is not None:
            raise ConfigError(f"{what} {spec.name!r}: give preset and checkpoint together, instead of model")
        names = preset_names(what)
        if spec.preset not in names:
            raise ConfigError(f"{what} {spec.name!r}: unknown preset {spec.preset!r}; presets: {', '.join(names)}")
        spec.checkpoint = _path(base, spec.checkpoint)
        if not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(f"{what} {spec.name!r}: checkpoint not found: {spec.checkpoint}")

    def per_benchmark_files(e, key, what):
        files = e.get(key, {})
        if not isinstance(files, dict):
            raise ConfigError(f"{what} {e['name']!r}: {key} must be a table benchmark name -> file")
        unknown = set(files) - set(bench_names)
        if unknown:
            raise ConfigError(f"{what} {e['name']!r}: {key} names unknown benchmarks {sorted(unknown)}")
        return {b: _path(base, f) for b, f in files.items()}

    recognizers = []
    for e in raw["recognizers"]:
        spec = make_spec(RecognizerSpec, e, "recognizer", "embeddings")
        preset_entry(spec, "recognizer")
        if spec.model is None and spec.preset is None and not spec.embeddings:
            raise ConfigError(f"recognizer {spec.name!r} needs a model (TorchScript file), preset + checkpoint, or "
                              "embeddings files")
        if spec.model is not None:
            spec.model = model_file(spec, "recognizer")
        from ..recognizer import CHANNEL_ORDERS, FLIP_MODES, _triple

        if spec.channel_order not in CHANNEL_ORDERS + (None,) or spec.flip not in FLIP_MODES:
            raise ConfigError(f"recognizer {spec.name!r}: channel_order in {CHANNEL_ORDERS}, flip in {FLIP_MODES}")
        try:
            if spec.std is not None and min(_triple(spec.std, "std")) <= 0:
                raise ValueError("std must be positive")
            if spec.mean is not None:
                _triple(spec.mean, "mean")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"recognizer {spec.name!r}: {exc}") from None
        recognizers.append(spec)

    qualities = []
    for e in raw["qualities"]:
        spec = make_spec(QualitySpec, e, "quality", "scores")
        if (spec.method is None) == (not spec.scores):
            raise ConfigError(f"quality {spec.name!r}: give either method + model (a vitfiqa method) or scores "
                              "(per-benchmark score files)")
        from ..baselines.reproduce import check_spec as check_baseline, is_baseline

        if is_baseline(spec.method):  # a baseline row: preset + checkpoint, or model (vitfiqa.baselines)
            _check_model_options(spec)
            try:
                check_baseline(spec, lambda p: _path(base, p))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        elif spec.method is not None:
            spec.method = _quality_method(spec)
            preset_entry(spec, "quality")  # preset + checkpoint: an official ViT architecture (vitfiqa.models)
            if spec.model is None and spec.preset is None:
                raise ConfigError(f"quality {spec.name!r}: method {spec.method!r} needs a model (or preset + "
                                  "checkpoint)")
            if spec.model is not None:
                spec.model = model_file(spec, "quality")
            _check_model_options(spec)
            from ..config import check_batch_independent, score_config

            check_batch_independent(score_config(methods=_methods_of([spec]), **spec.options))
        else:
            given = [k for k in QUALITY_MODEL_OPTIONS + ("preset", "checkpoint") if getattr(spec, k) is not None]
            if given:
                raise ConfigError(f"quality {spec.name!r}: {given} are options of a method row (method + model), "
                                  "not of score files")
        qualities.append(spec)

    top = {k: raw[k] for k in TOP_LEVEL - {"benchmarks", "recognizers", "qualities"} if k in raw}
    cfg = Config(benchmarks, recognizers, qualities, **top)
    cfg.out = _path(base, cfg.out)
    cfg.cache = _path(base, cfg.cache) if cfg.cache else None  # default: <out>/cache
    cfg.fmrs = [float(f) for f in cfg.fmrs]
    if not cfg.fmrs or not all(0 < f < 1 for f in cfg.fmrs):
        raise ConfigError(f"fmrs must be values in (0, 1), got {cfg.fmrs}")
    from .edc import VARIANTS

    if cfg.variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, got {cfg.variant!r}")
    if not 0 < float(cfg.limit) <= 1:
        raise ConfigError(f"limit must be in (0, 1], got {cfg.limit}")
    from ..options import check_batch_size

    try:
        check_batch_size(cfg.batch_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def export_presets(cfg: Config) -> None:
    """Each ``preset`` + ``checkpoint`` entry -> a TorchScript file in the cache (made once per preset and
    checkpoint content, then reused, so the cache keys that hash the model file stay put); sets its ``model``."""
    from ..baselines.reproduce import is_baseline
    from ..sources import resolve

    for spec, role in [(s, "recognizer") for s in cfg.recognizers] + [(s, "quality") for s in cfg.qualities]:
        if spec.preset is None or spec.model is not None or (role == "quality" and is_baseline(spec.method)):
            continue  # a baseline's preset is its own (vitfiqa.baselines)
        key = _json_hash(dict(preset=spec.preset, checkpoint=file_hash(spec.checkpoint)))  # one file for both roles
        path = Path(cfg.cache) / "models" / f"{spec.preset}-{key[:16]}.pt"
        if not path.is_file():
            log.info("%s %s: exporting preset %s with %s", role, spec.name, spec.preset, spec.checkpoint)
            data = resolve(spec.preset, checkpoint=spec.checkpoint, role=role).model
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        spec.model = str(path)


def _quality_method(spec: QualitySpec) -> str:
    """The score column a quality row's ``method`` names (an alias resolved, see METHOD_ALIASES)."""
    column = METHOD_ALIASES.get(spec.method, spec.method)
    if column not in score_columns():
        raise ConfigError(f"quality {spec.name!r}: method must be one of "
                          f"{sorted(set(score_columns()) | set(METHOD_ALIASES))} or a baseline "
                          f"(vitfiqa.baselines.all_columns()), got {spec.method!r}")
    return column


def _check_model_options(spec: QualitySpec) -> None:
    """A method row's model options, checked as the model loader checks them (one-line ConfigError)."""
    from ..contract import check_input_contract

    contract = {k: getattr(spec, k) for k in ("image_size", "channel_order", "normalization")
                if getattr(spec, k) is not None}
    try:
        check_input_contract(contract)
        if spec.final_norm is not None and (not isinstance(spec.final_norm, str) or not spec.final_norm.strip()):
            raise ValueError(f"final_norm must be a module path such as 'norm', got {spec.final_norm!r}")
        if spec.device is not None and not isinstance(spec.device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {spec.device!r}")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"quality {spec.name!r}: {exc}") from None


# -- content hashes ------------------------------------------------------------------------------------------

def _json_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def benchmark_fingerprint(ds: ImageSet) -> str:
    """What the cached arrays of a benchmark depend on: image keys, sources (bytes content; path, size and
    modification time of files; landmarks of aligned crops), image size and the pairs."""
    from ..align import FaceCrop

    h = hashlib.sha256()
    h.update(repr(ds.image_size).encode())
    if ds.channel_swap:  # (absent otherwise, so caches of the release files keep their keys)
        h.update(b"channel-swapped files\0")
    for key, src in zip(ds.keys, ds.sources):
        h.update(key.encode() + b"\0")
        if isinstance(src, FaceCrop):
            h.update(np.asarray(src.landmarks).tobytes())
            src = src.source
        if isinstance(src, (bytes, bytearray)):
            h.update(hashlib.sha256(src).digest())
        else:
            try:
                st = os.stat(src)
                h.update(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{src}|missing".encode())
    for arr in (ds.pairs.a, ds.pairs.b, ds.pairs.genuine):
        h.update(arr.tobytes())
    return h.hexdigest()


# -- the caches -------------------------------------------------------------------------------------------------
# Qualities (per-image scores) go to the package's results table (vitfiqa.results.ScoreTable: atomic CSV shards
# of whole batches), one table per quality source and benchmark. Embeddings (N x 1024 floats: 9 GB as CSV text at
# IJB-C scale) go to a memory-mapped .npy with a per-image status file, replaced atomically after every batch
# with the results table's atomic_write.

TODO, DONE, UNREADABLE = 0, 1, 2


class EmbeddingCache:
    """Per-image embeddings [N, D] on disk with a status per image (to do / done / unreadable).

    Values go into a memory-mapped ``values.npy``; after every batch they are flushed and then the status file
    is replaced atomically, so an interrupted run loses at most the batch in flight and a re-run computes only
    the images still to do. ``key`` (a content hash of everything the values depend on) names the folder."""

    def __init__(self, root: str | os.PathLike, key: str, n: int, describe: dict):
        self.dir = Path(root) / f"embeddings-{key[:24]}"
        self.n = n
        self.describe = describe
        self.values = None
        self.status = np.zeros(n, np.uint8)
        status = self.dir / "status.npy"
        if status.is_file() and (self.dir / "values.npy").is_file():
            try:
                st = np.load(status, allow_pickle=False)
                values = np.load(self.dir / "values.npy", mmap_mode="r+", allow_pickle=False)
                if st.shape != (n,) or values.ndim != 2 or len(values) != n:
                    raise ValueError("sizes do not match the benchmark")
                self.status, self.values = st, values
            except (OSError, ValueError) as exc:
                log.warning("cache %s unusable (%s): recomputing", self.dir, exc)

    @property
    def todo(self) -> np.ndarray:
        return np.flatnonzero(self.status == TODO)

    def _allocate(self, width: int) -> None:
        from numpy.lib.format import open_memmap

        from ..results import atomic_write

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "values.tmp.npy"
        mm = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.n, width))
        mm.flush()
        del mm
        os.replace(tmp, self.dir / "values.npy")
        self.values = np.load(self.dir / "values.npy", mmap_mode="r+")
        atomic_write(self.dir / "meta.json", json.dumps(self.describe, indent=1, default=str).encode())

    def write(self, indices: np.ndarray, values: np.ndarray | None, unreadable=()) -> None:
        import io

        from ..results import atomic_write

        if values is not None and len(indices):
            if self.values is None:
                self._allocate(values.shape[1])
            self.values[indices] = values
            self.values.flush()
            self.status[np.asarray(indices, dtype=np.int64)] = DONE
        if len(unreadable):
            self.status[np.asarray(list(unreadable), dtype=np.int64)] = UNREADABLE
        if self.values is None:
            return  # nothing readable yet: the next run tries these images again
        buf = io.BytesIO()
        np.save(buf, self.status)
        atomic_write(self.dir / "status.npy", buf.getvalue())

    def features(self) -> np.ndarray:
        """[N, D] float32 (memory-mapped); rows of unreadable images are NaN."""
        if self.values is None:
            raise CorruptEntry("no image of the benchmark could be read")
        bad = np.flatnonzero(self.status != DONE)
        if len(bad):
            self.values[bad] = np.nan
        return self.values


# -- computing embeddings and qualities ------------------------------------------------------------------------

def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False)


def compute_embeddings(spec: RecognizerSpec, ds: ImageSet, cfg: Config, fingerprint: str,
                       progress: bool) -> EmbeddingCache:
    """Per-image embeddings of a benchmark with one recognizer, cached and resumable."""
    from ..recognizer import Recognizer

    opts = {k: v for k, v in asdict(spec).items() if k not in ("name", "model", "embeddings",
                                                                "detector_score_weighting")}
    key = _json_hash(dict(model=file_hash(spec.model), benchmark=fingerprint, preprocessing=opts))
    cache = EmbeddingCache(cfg.cache, key, len(ds),
                           dict(recognizer=spec.name, model=spec.model, benchmark=ds.name, options=opts))
    todo = cache.todo
    if len(todo) == 0:
        log.info("embeddings %s on %s: cached (%s)", spec.name, ds.name, cache.dir)
        return cache
    log.info("embeddings %s on %s: %d of %d images to compute%s", spec.name, ds.name, len(todo), len(ds),
             f" on Ray ({cfg.ray})" if cfg.ray is not None else "")
    options = dict(dtype=spec.dtype, channel_order=spec.channel_order, mean=spec.mean, std=spec.std, flip=spec.flip,
                   output=spec.output)
    bar = _progress(len(ds), len(ds) - len(todo), f"embeddings {spec.name} / {ds.name}", progress)
    if cfg.ray is not None:
        from ..distributed import embed_with_ray

        # the batches the local path makes of the images still to do (ImageSet.iter_batches): the same bits
        batches = [todo[s:s + cfg.batch_size] for s in range(0, len(todo), cfg.batch_size)]
        for indices, ok, embeddings, errors in embed_with_ray(
                spec.model, ds.sources, batches, image_size=ds.image_size, channel_swap=ds.channel_swap,
                address=None if cfg.ray in ("", "local") else cfg.ray, max_pixels=ds.max_pixels,
                device=None if cfg.device == "cpu" else cfg.device, **options):
            for i, reason in errors.items():
                ds.errors.append((i, f"{ds.name}: image {i} cannot be decoded: {reason}"))
            cache.write(ok, embeddings, unreadable=list(errors))
            bar.update(len(indices))
    else:
        norm = {k: v for k, v in (("mean", spec.mean), ("std", spec.std)) if v is not None} or None
        rec = Recognizer(spec.model, cfg.model_options(spec.dtype, ds.image_size, channel_order=spec.channel_order,
                                                       normalization=norm),
                         flip=spec.flip, output=spec.output, name=spec.name)
        for b, embeddings in extract_embeddings(rec, ds, cfg.batch_size, workers=cfg.workers, indices=todo):
            cache.write(b.ok, embeddings, unreadable=list(b.errors))
            bar.update(len(b.indices))
    bar.close()
    return cache


def _quality_table(spec: QualitySpec, model_sha256: str, ds: ImageSet, cfg: Config, fingerprint: str):
    from ..config import score_config
    from ..pipeline import run_description
    from ..results import ScoreTable

    run = run_description(model_sha256, ds.image_size, spec.dtype,
                          score_config(methods=_methods_of([spec]), **spec.options))
    run.update(score=spec.method, benchmark=fingerprint)
    if spec.input_key():  # (absent otherwise, so existing caches keep their keys)
        run.update(model_options=spec.input_key())
    key = _json_hash(dict(run=run, batch_size=int(cfg.batch_size)))
    return ScoreTable(Path(cfg.cache) / f"quality-{key[:24]}.table", paths=ds.keys, keys=[spec.method],
                      batch_size=int(cfg.batch_size), run=run)


def _methods_of(specs: list[QualitySpec]) -> list[str]:
    """The vitfiqa methods that write the specs' score columns (``method`` in a config names a score column:
    ``exfiqa_FW`` is EX-FIQA's), once each, in the core registry's order (part of the cache keys)."""
    wanted = {score_columns()[s.method] for s in specs}
    return [m for m in registered_methods() if m in wanted]


def compute_qualities(specs: list[QualitySpec], ds: ImageSet, cfg: Config, fingerprint: str,
                      progress: bool) -> dict[str, np.ndarray]:
    """Per-image vitfiqa qualities (NaN for unreadable images), each quality source stored in its own results
    table; sources sharing a model and options are scored in one pass over the images."""
    import dataclasses

    out: dict[str, np.ndarray] = {}
    groups: dict[tuple, list[QualitySpec]] = {}
    for spec in specs:
        mo = spec.model_options(cfg)
        groups.setdefault((spec.model, json.dumps(spec.options, sort_keys=True), json.dumps(mo.to_dict(), default=str)),
                          []).append(spec)
    files = all(isinstance(src, str) for src in ds.sources)
    if cfg.ray is not None and not files:
        log.info("qualities on %s: scored locally (Ray scores image files; this benchmark holds encoded bytes or "
                 "aligned crops)", ds.name)
    for (model_path, _, _), group in groups.items():
        mo = group[0].model_options(cfg)
        qds, qfp = ds, fingerprint
        if tuple(mo.image_size) != ds.image_size:  # this model's own input size: decoded at it
            qds = dataclasses.replace(ds, image_size=mo.image_size, errors=[])
            qfp = benchmark_fingerprint(qds)
        if cfg.ray is not None and files and mo.normalization is None:
            out.update(_qualities_on_ray(group, model_path, mo, qds, cfg, qfp, progress))
            continue
        if cfg.ray is not None and files:
            log.info("qualities %s on %s: scored locally (a normalization option is not carried to Ray)",
                     ", ".join(s.name for s in group), ds.name)
        out.update(_qualities_local(group, model_path, mo, qds, cfg, qfp, progress))
    return out


def _qualities_local(group: list[QualitySpec], model_path: str, mo: ModelOptions, ds: ImageSet, cfg: Config,
                     fingerprint: str, progress: bool) -> dict[str, np.ndarray]:
    """One pass of a model over a benchmark in this process, each quality source into its results table."""
    from ..api import QualityModel
    from ..loader import to_model_input

    out: dict[str, np.ndarray] = {}
    # rows of the same score column here (e.g. "exfiqa" and "exfiqa_FW") share one table: the same scores
    first = {s.method: s for s in reversed(group)}
    tables = {m: _quality_table(s, file_hash(model_path), ds, cfg, fingerprint) for m, s in first.items()}
    try:
        pending = sorted(set().union(*(t.pending_batches() for t in tables.values())))
        names = ", ".join(s.name for s in group)
        if pending:
            todo = np.concatenate([np.arange(s, min(s + cfg.batch_size, len(ds))) for s in pending])
            log.info("qualities %s on %s: %d of %d images to score", names, ds.name, len(todo), len(ds))
            model = QualityModel(model_path, mo.replace(image_size=ds.image_size))
            methods = _methods_of(group)
            bar = _progress(len(ds), len(ds) - len(todo), f"qualities {names} / {ds.name}", progress)
            for b in ds.iter_batches(cfg.batch_size, workers=cfg.workers, indices=todo):
                scores = {}
                if b.images is not None:
                    scores = model.score(to_model_input(b.images, model), methods=methods, preprocess=False,
                                         **group[0].options).numpy()
                pos = {int(i): j for j, i in enumerate(b.ok)}
                for m in tables:
                    col = [float(scores[m][pos[int(i)]]) if int(i) in pos else float("nan") for i in b.indices]
                    tables[m].commit({"index": b.indices.tolist(), "path": [ds.keys[i] for i in b.indices],
                                      m: col, "error": [b.errors.get(int(i), "") for i in b.indices]})
                bar.update(len(b.indices))
            bar.close()
        else:
            log.info("qualities %s on %s: cached", names, ds.name)
        for s in group:
            out[s.name] = np.asarray(tables[s.method].columns_dict()[s.method], dtype=np.float64)
    finally:
        for t in tables.values():
            t.close()
    return out


def _read_order(model_path: str, channel_order: str | None, swapped: bool) -> str | None:
    """The channel order to ask of a model reading a benchmark's files as they are decoded (Ray decodes in its
    actors, without the benchmark's swap): for channel-swapped files, the model's own order reversed, which
    gives the model the same input as swapping on read (the reversal comes before the per-channel
    normalisation either way)."""
    if not swapped:
        return channel_order
    from ..contract import read_input_contract
    from ..preprocess import DEFAULT_CHANNEL_ORDER

    order = channel_order or (read_input_contract(Path(model_path)) or {}).get("channel_order") or DEFAULT_CHANNEL_ORDER
    return "bgr" if order == "rgb" else "rgb"


def _qualities_on_ray(group: list[QualitySpec], model_path: str, mo: ModelOptions, ds: ImageSet, cfg: Config,
                      fingerprint: str, progress: bool) -> dict[str, np.ndarray]:
    """One pass of a model over a benchmark's image files on Ray (:func:`vitfiqa.distributed.score_with_ray`,
    which resumes its own results table in the cache)."""
    from ..distributed import score_with_ray

    methods = _methods_of(group)
    spec_key = dict(model=file_hash(model_path), benchmark=fingerprint, methods=methods,
                    options=group[0].options, dtype=mo.dtype, batch_size=int(cfg.batch_size))
    if group[0].input_key():
        spec_key.update(model_options=group[0].input_key())
    key = _json_hash(spec_key)
    log.info("qualities %s on %s: on Ray (%s)", ", ".join(s.name for s in group), ds.name, cfg.ray)
    model = mo.replace(image_size=ds.image_size,
                       channel_order=_read_order(model_path, mo.channel_order, ds.channel_swap))
    if mo.device == "cpu":  # the config's default device: on Ray, GPUs when the cluster has them
        model = model.replace(device="auto")
    frame = score_with_ray(model_path, list(ds.sources), Path(cfg.cache) / f"ray-quality-{key[:24]}.table",
                           methods, run=RunOptions(batch_size=int(cfg.batch_size)), model_options=model,
                           address=None if cfg.ray in ("", "local") else cfg.ray, progress=progress,
                           **group[0].options)
    frame = frame.sort_values("index")
    return {s.name: frame[s.method].to_numpy(dtype=np.float64) for s in group}


# -- external files: scores of other methods, precomputed embeddings -------------------------------------------

KEY_COLUMNS = ("key", "path", "image", "name", "file", "filename", "index")


_PREPARED_PATH = re.compile(r"(?:^|/)quality_data/[^/]+/images/(?P<tail>[^/]+)$")


def dataset_tail(entry: str) -> str | None:
    """The dataset-relative part of a path into one of CR-FIQA's prepared folders
    (``[<root>/]quality_data/<dataset>/images/<file>`` -> ``<file>``, as its ``getQualityScore.py`` keys score
    files), else None."""
    m = _PREPARED_PATH.search(entry.replace("\\", "/"))
    return m.group("tail") if m else None


def _match_keys(entries: list[str], ds: ImageSet, what: str) -> np.ndarray:
    """Position in ``ds`` of each external entry (-1 when not in the benchmark). Entries match an image key
    exactly, or as a path ending in it (absolute paths of another machine), or the key ends in the entry
    (bare file names), and must do so unambiguously. A path into a CR-FIQA prepared folder
    (``quality_data/<ds>/images/<file>``) matches on its dataset-relative tail ``<file>``: the image of a
    ``.bin`` it was extracted from (``%05d.jpg`` = the image's index) or the one image whose file name it is
    (the release's XQLFW, IJB-C loose crops)."""
    exact = {k: i for i, k in enumerate(ds.keys)}
    by_base: dict[str, list[int]] = {}
    for i, k in enumerate(ds.keys):
        by_base.setdefault(k.replace("\\", "/").rsplit("/", 1)[-1], []).append(i)
    indexed = all(k == str(i) for i, k in enumerate(ds.keys))  # a .bin: images are named by their index
    out = np.full(len(entries), -1, np.int64)
    for j, e in enumerate(entries):
        e = str(e).strip()
        if e in exact:
            out[j] = exact[e]
            continue
        norm = e.replace("\\", "/")
        cands = [i for i in by_base.get(norm.rsplit("/", 1)[-1], [])
                 if norm.endswith("/" + ds.keys[i]) or ds.keys[i].endswith("/" + norm) or ds.keys[i] == norm]
        tail = dataset_tail(norm) if not cands else None
        if tail is not None:
            stem = tail.rsplit(".", 1)[0]
            if indexed:
                cands = [int(stem)] if stem.isdigit() and int(stem) < len(ds) else []
            else:
                cands = by_base.get(tail, [])
        if len(cands) > 1:
            raise CorruptEntry(f"{what}: entry {e!r} matches {len(cands)} images of {ds.name} "
                               f"({ds.keys[cands[0]]!r}, {ds.keys[cands[1]]!r})")
        if cands:
            out[j] = cands[0]
    return out


def _is_numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)


def _read_table(path: str):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        if suffix == ".csv":
            return pd.read_csv(p, encoding="utf-8-sig")
        if suffix in (".txt", ".tsv", ".dat"):
            # CR-FIQA score files: "path score" per line, no header
            frame = pd.read_csv(p, sep=r"\s+", header=None, encoding="utf-8-sig", dtype={0: str})
            if frame.shape[1] != 2:
                raise CorruptEntry(f"{p.name}: expected two whitespace-separated columns (path score)")
            frame.columns = ["path", "score"]
            return frame
    except (ValueError, OSError, ImportError) as exc:
        raise CorruptEntry(f"{p.name} cannot be read: {str(exc).splitlines()[0]}") from None
    raise CorruptEntry(f"{p.name}: unsupported score/embedding file type {suffix!r} (.csv, .parquet, .txt, .npy, .npz)")


def _positions(frame, ds: ImageSet, key: str | None, what: str) -> tuple[np.ndarray, str]:
    key = key or next((c for c in KEY_COLUMNS if c in frame.columns), None)
    if key is None or key not in frame.columns:
        raise CorruptEntry(f"{what}: no key column ({', '.join(KEY_COLUMNS)}) to match images by")
    if key == "index":
        pos = frame[key].to_numpy()
        if not np.issubdtype(pos.dtype, np.integer) or (pos < 0).any() or (pos >= len(ds)).any():
            raise CorruptEntry(f"{what}: index column must hold image indices in [0, {len(ds)})")
        return pos.astype(np.int64), key
    return _match_keys([str(v) for v in frame[key]], ds, what), key


def _scatter(pos: np.ndarray, values: np.ndarray, n: int, what: str, name: str,
             complete: bool = False) -> np.ndarray:
    """Values in the benchmark's image order (NaN where an image has no entry). An image listed again with the
    same value is one entry (CR-FIQA's XQLFW lists an image once per pair); with another value it is an error.
    ``complete``: every image needs an entry (else CorruptEntry), otherwise the missing ones are logged."""
    found = pos >= 0
    out = np.full((n,) + values.shape[1:], np.nan, dtype=np.float64 if values.ndim == 1 else np.float32)
    out[pos[found]] = values[found]  # the last of repeated entries
    dup = np.bincount(pos[found], minlength=n) > 1
    if dup.any():
        rows = np.flatnonzero(found & dup[np.maximum(pos, 0)])
        same = np.array([np.array_equal(values[r], out[pos[r]], equal_nan=True) for r in rows])
        if not same.all():
            i = int(pos[rows[~same][0]])
            raise CorruptEntry(f"{what}: image {i} of {name} is listed twice with different values")
    missing = np.ones(n, bool)
    missing[pos[found]] = False
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        if complete:
            raise CorruptEntry(f"{what}: {int(missing.sum())} of {n} images of {name} have no entry, e.g. image "
                               f"{first}; a method's row needs a score for every image")
        log.warning("%s: %d of %d images of %s have no entry (their pairs are dropped)", what, int(missing.sum()),
                    n, name)
    return out


def read_external_scores(spec: QualitySpec, bench: str, ds: ImageSet) -> np.ndarray:
    """Per-image scores of another FIQA method from CSV / Parquet (a key column: path, image, name or index;
    ``column`` or the one numeric column) or a CR-FIQA ``path score`` text file; higher = better unless
    ``higher_is_better = false``."""
    path = spec.scores[bench]
    what = f"quality {spec.name!r} ({path})"
    try:
        frame = _read_table(path)
        pos, key = _positions(frame, ds, spec.key, what)
        numeric = [c for c in frame.columns if c != key and _is_numeric(frame[c])]
        col = spec.column or (numeric[0] if len(numeric) == 1 else None)
        if not numeric and spec.column is None:
            raise CorruptEntry(f"{what}: no numeric score column (columns {list(frame.columns)})")
        if col is None or col not in frame.columns:
            raise CorruptEntry(f"{what}: say which score column to use (column = ...); numeric columns: {numeric}")
        vals = frame[col].to_numpy(dtype=np.float64)
    except CorruptEntry:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: file not found") from None
    except (ValueError, TypeError, KeyError, OSError) as exc:  # e.g. text in the score column
        raise CorruptEntry(f"{what}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                           ) from None
    bad = ~np.isfinite(vals) & (pos >= 0)
    if bad.any():
        raise CorruptEntry(f"{what}: {int(bad.sum())} scores are not finite numbers, e.g. for "
                           f"{frame[key].iloc[int(np.flatnonzero(bad)[0])]!r}")
    if not spec.higher_is_better:
        vals = -vals
    return _scatter(pos, vals, len(ds), what, ds.name, complete=True)


def read_external_embeddings(path: str, ds: ImageSet, name: str) -> np.ndarray:
    """Precomputed image features, used as they are (flip concatenation included if it was applied):
    ``.npy`` [N, D] in the benchmark's image order; ``.npz`` with ``embeddings`` and ``keys`` arrays;
    Parquet with a key column and an ``embedding`` list column (or one column per dimension)."""
    what = f"embeddings of {name!r} ({Path(path).name})"
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: file not found: {p}")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise CorruptEntry(f"{what}: {exc}") from None
        if arr.ndim != 2 or len(arr) != len(ds):
            raise CorruptEntry(f"{what}: shape {arr.shape}, expected [{len(ds)}, D] in the benchmark's image order")
        return arr.astype(np.float32, copy=False)
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if "embeddings" not in z or "keys" not in z:
                    raise CorruptEntry(f"{what}: needs arrays 'embeddings' and 'keys', has {sorted(z.files)}")
                emb, keys = z["embeddings"], z["keys"]
        except ValueError as exc:
            raise CorruptEntry(f"{what}: {exc}") from None
        if emb.ndim != 2 or len(keys) != len(emb):
            raise CorruptEntry(f"{what}: embeddings {emb.shape} and {len(keys)} keys do not match")
        pos = (keys.astype(np.int64) if np.issubdtype(keys.dtype, np.integer) else
               _match_keys([str(k) for k in keys], ds, what))
        return _scatter(pos, emb, len(ds), what, ds.name)
    frame = _read_table(str(p))
    pos, key = _positions(frame, ds, None, what)
    if "embedding" in frame.columns:
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in frame["embedding"]])
    else:
        cols = [c for c in frame.columns if c != key and _is_numeric(frame[c])]
        emb = frame[cols].to_numpy(dtype=np.float32)
    return _scatter(pos, emb, len(ds), what, ds.name)


# -- evaluation --------------------------------------------------------------------------------------------------

def benchmark_comparison_scores(features: np.ndarray, ds: ImageSet, det_weights: bool, valid: np.ndarray | None = None) -> np.ndarray:
    """Comparison score per pair (cosine); NaN where an image (or a whole template) is missing. ``valid``
    marks the readable images (default: rows without NaN)."""
    if ds.templates is not None:
        t = ds.templates
        weights = t.detector_scores if det_weights else None
        if det_weights and weights is None:
            raise ValueError("detector_score_weighting needs the benchmark's detector scores (IJB-C landmarks file)")
        _, feats = aggregate_templates(features, t.template, t.media, weights=weights, valid=valid)
    else:
        feats = np.asarray(features, dtype=np.float32)
    return masked_comparison_scores(feats, ds.pairs)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("vitfiqa", "torch", "numpy", "pandas", "pillow", "matplotlib", "pyarrow", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class ReproduceResult:
    frame: Any                      # tidy DataFrame: method, benchmark, fr_model, fmr, pauc, pauc_x1e3, curve...
    markdown: str
    out: Path
    skipped: dict[str, str]         # benchmark -> reason
    files: dict[str, str]


def reproduce(config: str | os.PathLike | Mapping, out: str | os.PathLike | None = None, progress: bool = True,
              base: str | os.PathLike | None = None) -> ReproduceResult:
    """Run a reproduce config (TOML path or dict) and write the table, plots and resolved config to its ``out``
    folder (or ``out``). Returns the tidy result frame and what was written."""
    import pandas as pd

    t0 = time.time()
    cfg = load_config(config, base=base)
    if out is not None:
        cfg.out = str(out)
    cfg.cache = cfg.cache or str(Path(cfg.out) / "cache")
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_presets(cfg)
    size = (int(cfg.image_size), int(cfg.image_size))
    skipped: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    frames = []
    n_b = len(cfg.benchmarks)
    for bi, bspec in enumerate(cfg.benchmarks, 1):
        stage = f"[{bi}/{n_b}] {bspec.name}"
        try:
            log.info("%s: loading (%s)", stage, bspec.type)
            ds = BENCHMARK_TYPES[bspec.type][0]({**bspec.options, "image_size": size})
            ds.name = bspec.name
            n_units = len(ds.templates.ids) if ds.templates is not None else len(ds)
            log.info("%s: %d images, %d pairs (%d genuine)%s", stage, len(ds), len(ds.pairs), ds.pairs.n_genuine,
                     f", {n_units} templates" if ds.templates is not None else "")
            fp = benchmark_fingerprint(ds)
            # qualities per image: vitfiqa methods (cached) and external files
            qualities: dict[str, np.ndarray] = {}
            from ..baselines.reproduce import is_baseline, qualities as baseline_qualities

            for q in (q for q in cfg.qualities if is_baseline(q.method)):
                try:  # one row at a time: a network the method cannot run on drops that row, not the benchmark
                    qualities.update(baseline_qualities([q], ds, cfg, fp, progress))
                except (ValueError, RuntimeError, FileNotFoundError) as exc:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    log.warning("%s: quality %s skipped: %s", stage, q.name, reason)
                    notes.setdefault(bspec.name, []).append(f"quality {q.name}: {reason}")
            internal = [q for q in cfg.qualities if q.method is not None and not is_baseline(q.method)]
            if internal:
                qualities.update(compute_qualities(internal, ds, cfg, fp, progress))
            for q in cfg.qualities:
                if q.method is None:
                    if bspec.name not in q.scores:
                        notes.setdefault(bspec.name, []).append(f"quality {q.name}: no score file for this benchmark")
                        continue
                    try:
                        qualities[q.name] = read_external_scores(q, bspec.name, ds)
                    except (FileNotFoundError, CorruptEntry) as exc:
                        log.warning("%s: quality %s skipped: %s", stage, q.name, exc)
                        notes.setdefault(bspec.name, []).append(f"quality {q.name}: {exc}")
            if ds.templates is not None:
                qualities = {k: template_quality(v, ds.templates.template) for k, v in qualities.items()}
            qualities = {q.name: qualities[q.name] for q in cfg.qualities if q.name in qualities}  # config order
            if not qualities:
                raise CorruptEntry("no quality scores for this benchmark")
            for rspec in cfg.recognizers:
                if rspec.model is None and bspec.name not in rspec.embeddings:
                    notes.setdefault(bspec.name, []).append(f"recognizer {rspec.name}: no embeddings for this benchmark")
                    continue
                try:
                    valid = None
                    if bspec.name in rspec.embeddings:
                        feats = read_external_embeddings(rspec.embeddings[bspec.name], ds, rspec.name)
                    else:
                        cache = compute_embeddings(rspec, ds, cfg, fp, progress)
                        feats, valid = cache.features(), cache.status == DONE
                except (FileNotFoundError, CorruptEntry) as exc:
                    log.warning("%s: recognizer %s skipped: %s", stage, rspec.name, exc)
                    notes.setdefault(bspec.name, []).append(f"recognizer {rspec.name}: {exc}")
                    continue
                log.info("%s: evaluating %s (%d quality sources x %d FMRs)", stage, rspec.name, len(qualities),
                         len(cfg.fmrs))
                sims = benchmark_comparison_scores(feats, ds, rspec.detector_score_weighting, valid)
                frames.append(evaluate(qualities, sims, ds.pairs, benchmark=bspec.name, fr_model=rspec.name,
                                       fmrs=cfg.fmrs, variant=cfg.variant, limit=float(cfg.limit),
                                       integration=cfg.pauc_integration, normalize=cfg.pauc_normalize))
            if ds.errors:
                notes.setdefault(bspec.name, []).append(f"{len(ds.errors)} unreadable images skipped")
        except (FileNotFoundError, CorruptEntry, OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("%s: skipped: %s", stage, reason)
            skipped[bspec.name] = reason
    if not frames:
        raise RuntimeError("no benchmark could be evaluated: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    df = pd.concat(frames, ignore_index=True)
    files = {}
    md = to_markdown(df, layout="fmr_blocks")
    files["markdown"] = str(out_dir / "table.md")
    Path(files["markdown"]).write_text(md)
    files["latex"] = str(out_dir / "table.tex")
    Path(files["latex"]).write_text(to_latex(df, layout="fmr_blocks",
                                             caption=f"pAUC-EDC x 10^3 (discard up to {cfg.limit:g}, {cfg.variant})"))
    files["csv"] = str(out_dir / "table.csv")
    to_csv(df, files["csv"], layout="fmr_blocks")
    files["tidy_csv"] = str(out_dir / "pauc.csv")
    df.drop(columns="curve").to_csv(files["tidy_csv"], index=False)
    files["edc_png"], files["edc_pdf"] = str(out_dir / "edc.png"), str(out_dir / "edc.pdf")
    import matplotlib.pyplot as plt

    plt.close(plot_edc_grid(df, (files["edc_png"], files["edc_pdf"])))
    files["resolved_config"] = str(out_dir / "resolved_config.json")
    resolved = dict(config=asdict(cfg), versions=_versions(), skipped=skipped, notes=notes,
                    model_hashes={p: file_hash(p) for p in
                                  sorted({s.model for s in cfg.recognizers + cfg.qualities if s.model})},
                    seconds=round(time.time() - t0, 2))
    Path(files["resolved_config"]).write_text(json.dumps(resolved, indent=1, default=str))
    for name, reason in skipped.items():
        log.warning("benchmark %s was skipped: %s", name, reason)
    log.info("wrote %s (%.1f s)", ", ".join(Path(f).name for f in files.values()), time.time() - t0)
    return ReproduceResult(df, md, out_dir, skipped, files)


__all__ = ["reproduce", "load_config", "Config", "ConfigError", "ReproduceResult", "EmbeddingCache",
           "benchmark_fingerprint", "read_external_scores", "read_external_embeddings"]
