"""The user-facing API: :func:`load` a TorchScript ViT, then :meth:`QualityModel.score` image batches.

Everything numeric happens in the C++ core (``vitfiqa._core``): one forward pass per batch captures the
attention logits and block tokens the requested methods need, and the method kernels run on them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import _core
from .config import ScoreConfig, methods as _registered_methods, score_config
from .digest import file_sha256
from .loader import as_batch
from .options import ModelOptions, check_batch_size, no_unknown, resolve_device, take_deprecated
from .preprocess import DEFAULT_CHANNEL_ORDER, DEFAULT_IMAGE_SIZE, DEFAULT_NORMALIZATION, check_channel_order

METHODS = _registered_methods()  # the core's registry (csrc/methods/), not a list of our own
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


@dataclass
class QualityResult:
    """Per-image scores (higher = better quality for every method), optional heatmaps and raw captures: the
    core's typed result (``_core.ScoreResult``), field for field.

    ``scores`` maps a score name to a float64 tensor [B], in the order of the requested methods (e.g. ``attn``,
    ``vitnt``, ``vitfiqa``, EX-FIQA's ``exfiqa_F`` / ``exfiqa_FW``). ``exits`` is the EX-FIQA per-exit matrix
    [L,B] with ``exit_depths`` (1-based) and ``exit_columns`` (their column names in a table).
    ``heatmaps`` maps a method to [B,H,W] in [0,1]; ``heatmap_grids`` to the raw patch-grid values [B,gh,gw]
    they were drawn from (for data-set-wide normalisation with :func:`render_heatmaps`).
    ``ids`` names the images in input order: a file's path, else ``<image #i>`` / ``<bytes #i>`` (as in a
    results table's ``path`` column).
    """

    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    heatmaps: dict[str, torch.Tensor] = field(default_factory=dict)
    heatmap_grids: dict[str, torch.Tensor] = field(default_factory=dict)
    exits: torch.Tensor | None = None
    exit_depths: list[int] = field(default_factory=list)
    captures: dict[str, torch.Tensor] = field(default_factory=dict)
    exit_columns: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        """A summary (image count, each score's range, heatmap and exit shapes), never whole tensors."""
        n = len(self)
        parts = [f"{n} image{'s' if n != 1 else ''}"]
        for k, v in self.scores.items():
            v = v.detach().double()
            finite = v[torch.isfinite(v)]
            parts.append(f"{k}: {float(finite.min()):.4g}..{float(finite.max()):.4g}" if finite.numel()
                         else f"{k}: no finite value")
        if self.heatmaps:
            parts.append("heatmaps " + ", ".join(f"{k} {list(v.shape)}" for k, v in self.heatmaps.items()))
        if self.exits is not None:
            parts.append(f"exits {list(self.exits.shape)} (depths {self.exit_depths})")
        if self.captures:
            parts.append("captures " + ", ".join(self.captures))
        if self.ids:
            parts.append(f"ids {self.ids[0]!r}" + (f"..{self.ids[-1]!r}" if n > 1 else ""))
        return f"QualityResult({'; '.join(parts)})"

    @classmethod
    def _from_core(cls, r) -> "QualityResult":
        return cls(scores=r.scores, heatmaps=r.heatmaps, heatmap_grids=r.heatmap_grids, exits=r.exits,
                   exit_depths=list(r.exit_depths), captures=r.captures, exit_columns=list(r.exit_columns))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.scores[name]

    def __len__(self) -> int:
        return len(next(iter(self.scores.values()))) if self.scores else 0

    def numpy(self) -> dict[str, np.ndarray]:
        """Scores as NumPy arrays (zero-copy views of CPU tensors)."""
        return {k: v.detach().cpu().numpy() for k, v in self.scores.items()}

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-image column a results table holds: the scores, then one per exit (``exit_columns``)."""
        cols = self.numpy()
        if self.exits is not None:
            cols.update(zip(self.exit_columns, self.exits.detach().cpu().numpy()))
        return cols

    def to_frame(self):
        """A pandas DataFrame with one row per image: ``index`` (position in the input), ``path`` (:attr:`ids`),
        then one column per score (and per exit), as in a results table."""
        import pandas as pd

        cols = self.columns()
        n = len(self)
        ids = list(self.ids) if len(self.ids) == n else [f"<image #{i}>" for i in range(n)]
        return pd.DataFrame({"index": np.arange(n), "path": ids, **cols})

    @staticmethod
    def concat(parts: Sequence["QualityResult"]) -> "QualityResult":
        if not parts:
            raise ValueError("no results to concatenate")
        first = parts[0]
        out = QualityResult(exit_depths=list(first.exit_depths), exit_columns=list(first.exit_columns),
                            ids=[i for p in parts for i in p.ids] if all(p.ids for p in parts) else [])
        for k in first.scores:
            out.scores[k] = torch.cat([p.scores[k] for p in parts])
        for k in first.heatmaps:
            out.heatmaps[k] = torch.cat([p.heatmaps[k] for p in parts])
        for k in first.heatmap_grids:
            out.heatmap_grids[k] = torch.cat([p.heatmap_grids[k] for p in parts])
        if first.exits is not None:
            out.exits = torch.cat([p.exits for p in parts], dim=1)
        for k in first.captures:
            out.captures[k] = torch.cat([p.captures[k] for p in parts])
        return out


def _source_ids(images: Any, n: int) -> list[str]:
    """Names of the scored images: a file's path, else ``<image #i>`` / ``<bytes #i>`` (loader.source_name)."""
    from .loader import source_name

    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and len(images) == n:
        return [source_name(s, i) for i, s in enumerate(images)]
    return [f"<image #{i}>" for i in range(n)]


class QualityModel:
    """A TorchScript ViT wrapped for quality scoring.

    ``model`` is a path to a TorchScript file (``torch.jit.save`` of a scripted or traced module) or its
    bytes; ``options`` a :class:`vitfiqa.options.ModelOptions` (or its dict) saying how it is loaded and fed
    (the old keywords ``device=``, ``dtype=``, ... still work for one release, with a DeprecationWarning).
    ``dtype`` casts the model's floating parameters (float32, float16, bfloat16). ``sha256`` is the
    digest of the model file (a results table records it, so scores of two models are never mixed).

    The input contract (how images vitfiqa decodes are prepared for this model): ``image_size`` (H, W),
    ``channel_order`` ("rgb" or "bgr") and ``normalization`` ({"mean": [3], "std": [3]} on x/255). Each comes
    from the explicit argument if given, else from the record that :func:`vitfiqa.models.export_torchscript`
    stores in the file, else: the image size from the patch grid found in the graph (patch size x grid side;
    the standard 112 when it gives the same grid), channel order rgb, normalisation mean = std = 0.5.
    :attr:`input_contract` says which source each value came from. Float tensors passed to :meth:`score`
    are taken as already prepared.

    ``final_norm``: the model's final LayerNorm, which ViTNT-FIQA (and captured block tokens) apply to every
    block's output. ``None`` (default) finds it in the forward graph: the first ``layer_norm`` reached from
    the last block's output through value-preserving ops (dtype casts such as ``norm(x.float())``,
    ``contiguous``, views and reshapes, eval-mode dropout). A dotted module path (``"norm"``,
    ``"net.norm"``, ``"fc_norm"``) names it instead, for models whose ``forward`` does not apply it to the
    tokens (the ATTN-FIQA / ViTNT-FIQA repositories' ViT drops it from ``forward``; timm's ``fc_norm``
    models apply it after pooling): that module, which must be a LayerNorm, is then applied to each block's
    tokens. ``info["final_norm"]`` says which norm is used and ``info["final_norm_ops"]`` the ops passed.
    """

    def __init__(self, model: str | os.PathLike | bytes, options: ModelOptions | dict | None = None,
                 **deprecated):
        from .contract import check_input_contract, read_input_contract

        if isinstance(options, (str, torch.device)):  # the old second positional argument, the device
            deprecated["device"], options = options, None
        changes = take_deprecated(deprecated, ModelOptions, "options", "QualityModel")
        no_unknown(deprecated, "QualityModel")
        options = ModelOptions.of(options).replace(**changes) if changes else ModelOptions.of(options)
        self.options = options
        final_norm, image_size = options.final_norm, options.image_size
        channel_order, normalization = options.channel_order, options.normalization
        if final_norm is not None and (not isinstance(final_norm, str) or not final_norm.strip()):
            raise ValueError(f"final_norm must be None (find it in forward) or a module path such as 'norm', "
                             f"got {final_norm!r}")
        norm_path = (final_norm or "").strip()
        dtype_name = options.dtype
        if dtype_name not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype_name!r}; use one of {sorted(_DTYPES.values())}")
        device = resolve_device(options.device)
        if isinstance(model, (bytes, bytearray)):
            if len(model) == 0:
                raise ValueError("model bytes are empty")
            self._core = _core.CaptureModel.from_bytes(bytes(model), device, dtype_name, norm_path)
            self.source = "<bytes>"
            self.sha256 = hashlib.sha256(model).hexdigest()
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"model file not found: {path}")
            self._core = _core.CaptureModel(str(path), device, dtype_name, norm_path)
            self.source = str(path)
            self.sha256 = file_sha256(path)
        self.route = "torchscript bytes" if self.source == "<bytes>" else "torchscript file"  # see vitfiqa.sources
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype_name)
        self.final_norm = norm_path or None  # the module path the user named, None = found in forward
        explicit = {}
        if image_size is not None:
            explicit["image_size"] = image_size if isinstance(image_size, int) else [int(v) for v in image_size]
        if channel_order is not None:
            explicit["channel_order"] = check_channel_order(channel_order)
        if normalization is not None:
            explicit["normalization"] = normalization
        explicit = check_input_contract(explicit)
        record = read_input_contract(model if isinstance(model, (bytes, bytearray)) else Path(model)) or {}
        grid_size = self._size_from_graph()
        fallback = {"image_size": list(grid_size) if grid_size else None, "channel_order": DEFAULT_CHANNEL_ORDER,
                    "normalization": DEFAULT_NORMALIZATION}
        fallback_source = {"image_size": "patch grid in the graph", "channel_order": "default",
                           "normalization": "default"}
        self._contract, self._contract_source = {}, {}
        for key in ("image_size", "channel_order", "normalization"):
            for source, values in (("argument", explicit), ("model record", record),
                                   (fallback_source[key], fallback)):
                if values.get(key) is not None:
                    self._contract[key], self._contract_source[key] = values[key], source
                    break
        self.channel_order = self._contract["channel_order"]
        self.normalization = self._contract["normalization"]

    def _size_from_graph(self) -> tuple[int, int] | None:
        """Input size from the patch embedding: a conv with stride = kernel p and a position embedding of N
        tokens = prefix (0-8) + a square grid g x g. The standard 112 when floor(112 / p) = g (e.g.
        insightface's patch 9: 12 x 9 = 108 pixels used of 112), else g x p."""
        info = self.info
        patch, tokens = info.get("patch_size") or [], info.get("position_tokens", 0)
        if len(patch) != 2 or tokens <= 0:
            return None
        found = _core.square_token_grid(tokens)  # the core's prefix-token search, the one the scorer uses
        if found is None:
            return None
        side = found[1]
        return tuple(DEFAULT_IMAGE_SIZE[i] if DEFAULT_IMAGE_SIZE[i] // patch[i] == side else side * patch[i]
                     for i in range(2))

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) that decoded images are resized to; a clear error when the model does not tell it."""
        size = self._contract.get("image_size")
        if size is None:
            raise ValueError("the input size of this model is unknown: it carries no input contract and no patch "
                             "grid was found in its graph; pass image_size=(H, W) (CLI: --image-size)")
        return tuple(size)

    @property
    def input_contract(self) -> dict:
        """The resolved input contract and, under ``source``, where each value came from (argument, model
        record, patch grid in the graph, default)."""
        size = self._contract.get("image_size")
        return {**self._contract, "image_size": tuple(size) if size else None, "source": dict(self._contract_source)}

    @property
    def info(self) -> dict:
        """What the graph analysis found: blocks, attention kind, final norm, outputs, notes."""
        return self._core.info

    @property
    def num_blocks(self) -> int:
        return self._core.info["num_blocks"]

    def __repr__(self) -> str:
        i = self.info
        return (f"QualityModel({self.source!r}, blocks={i['num_blocks']}, attention={i['attention_kind']}, "
                f"device={i['device']}, dtype={i['dtype']})")

    # -- input handling -------------------------------------------------------------------------
    def prepare(self, images: Any, preprocess: bool | str = "auto") -> torch.Tensor:
        """Images in any supported form -> validated [B,3,H,W] tensor on the model's device and dtype."""
        x = as_batch(images, preprocess=preprocess, size=lambda: self.image_size, channel_order=self.channel_order,
                     normalization=self.normalization)
        if x.shape[0] == 0:
            raise ValueError("empty image batch")
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels in dim 1, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or Inf values")
        return x.to(device=self.device, dtype=self.dtype).contiguous()

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, images: Any, methods: Iterable[str] | str | None = None, *, config: ScoreConfig | dict | None = None,
              preprocess: bool | str = "auto", batch_size: int | None = None, **options) -> QualityResult:
        """Score images with one forward pass per batch.

        ``config``: a :class:`vitfiqa.ScoreConfig` (or its dict, nested or dotted: ``{"vitnt.blocks": [0, 5]}``)
        with every scoring option; ``methods`` and the keyword ``options`` are applied on top of it (default:
        ``ScoreConfig()``): a top-level field by its name (``heatmaps=True``) or a section as a dict of its fields
        (``attn={"block": -2}``; ``ScoreConfig.fields()`` lists names, defaults and docs). The old flat keywords
        named below (``attn_block=``, ...) still work for one release, with a DeprecationWarning:

        methods: any of :data:`vitfiqa.METHODS`: ``attn`` (ATTN-FIQA), ``vitnt`` (ViTNT-FIQA), ``vitfiqa``
        (ViT-FIQA quality head), ``exfiqa`` (EX-FIQA exits and fusions; needs a quality-token model).
        attn_block (``attn.block``): block whose logits ATTN-FIQA reads (default the last). attn_tokens: ``all``
        (the papers' plain mean over every query and key) or ``patches`` (prefix tokens excluded).
        attn_logits: where the softmax input adds a bias or mask to q.k*scale (relative-position bias as in
        BEiT and timm's relpos ViTs, additive masks; ``info["notes"]`` says so), ``qk`` reads q.k*scale alone
        (the papers' definition) and ``full`` the whole softmax input.
        The choice applies to the score, the heatmap and captured logits; attention weights (ViTNT's
        weighting) are always the model's own softmax output.
        vitnt_blocks: selected blocks (0-based, default all); vitnt_scale: s in 2/(1+exp(s d));
        vitnt_weighting: ``uniform`` or ``attention``; vitnt_attention_blocks (attention weighting): ``last``
        (the last selected block's attention, the official default) or ``all`` (averaged over the selected
        blocks: the official ``last_block_attention_only=False``).
        prefix_tokens / grid: override the CLS/quality-token count and patch grid found from the model.
        heatmap_normalize (``heatmap.normalize``): as the official ATTN-FIQA plot script, min-max on the patch
        grid BEFORE the bilinear resize, ``(g - lo) / (hi - lo + 1e-8)`` clipped to [0, 1]: ``image`` (each
        image's own min/max; official ``--normalize-per-image``), ``global`` (min/max over every image of this
        call, all batches; the official default ``normalize_global=True`` for the images of one figure) or
        ``none`` (raw values). heatmap_range=(lo, hi) with ``global``: a fixed range instead, e.g. a whole data
        set's min/max collected from ``result.heatmap_grids`` of earlier calls (see :func:`render_heatmaps`).
        exits (``exfiqa.exits``): EX-FIQA exit blocks (0-based, default all); exit_normalization
        (``exfiqa.normalization``): ``none``, ``zscore`` or ``minmax`` over the batch (for data-set-wide
        normalisation use :func:`fuse_exits` on ``exits``).
        Options of methods that are not requested are ignored.
        """
        cfg = score_config(config, methods=methods, **options)
        check_batch_size(batch_size, allow_none=True)
        scorer = self.scorer(cfg)  # validated against the model once, before the first batch
        x = self.prepare(images, preprocess)
        step = batch_size or x.shape[0]
        parts = [QualityResult._from_core(scorer.score(x[i:i + step])) for i in range(0, x.shape[0], step)]
        ids = _source_ids(images, x.shape[0])
        if len(parts) == 1:
            parts[0].ids = ids
            return parts[0]
        res = QualityResult.concat(parts)
        res.ids = ids
        if cfg.heatmaps and cfg.heatmap.normalize == "global" and not cfg.heatmap.range:
            # one range over every batch of this call
            size = tuple(res.heatmaps[next(iter(res.heatmaps))].shape[-2:]) if res.heatmaps else None
            res.heatmaps = {k: render_heatmaps(g, size, "global") for k, g in res.heatmap_grids.items()}
        return res

    def scorer(self, config: ScoreConfig | dict | None = None, **options):
        """The core's scorer for a config (arguments as :meth:`score`) validated against this model:
        ``.score(prepared_images)`` gives the core's typed result of one batch (``QualityResult._from_core``
        maps it), ``.columns()`` the per-image table columns."""
        return _core.Scorer(self._core, score_config(config, **options))

    def columns(self, config: ScoreConfig | dict | None = None, **options) -> list[str]:
        """The per-image columns (scores, then EX-FIQA's exits) that scoring with this config writes into a results
        table, in order; the config is validated against this model."""
        return self.scorer(config, **options).columns()

    def capture(self, images: Any, *, attention_blocks: Sequence[int] = (), probs_blocks: Sequence[int] = (),
                token_blocks: Sequence[int] = (), final_norm: bool = True, exit_blocks: Sequence[int] = (),
                exit_output: int | None = None, model_output: bool = False, preprocess: bool | str = "auto",
                attn_logits: str | None = None, distance_blocks: Sequence[int] = ()) -> dict:
        """Raw captures from one forward pass: ``attention_logits`` {block: [B,H,N,N]} (``attn_logits`` as in
        :meth:`score`),
        ``attention_probs``, ``block_tokens`` {block: [B,N,C]} (final-norm applied unless final_norm=False),
        ``exits`` {block: head output at that exit}, ``model_output``, ``patch_grid``, and ``token_distances``:
        ViTNT-FIQA's per-token step distances [B,N] (float64) between consecutive ``distance_blocks`` (final-norm
        outputs, whatever ``final_norm`` says; independent of ``token_blocks``). ``exit_output``: which element
        of the model's output the exits compute (None: the core's default, the last)."""
        L = self.num_blocks
        norm = lambda bs: sorted({b % L if -L <= b < L else b for b in bs})  # noqa: E731
        x = self.prepare(images, preprocess)
        extra = {} if attn_logits is None else {"attn_logits": str(attn_logits)}  # None: the core's default
        if exit_output is not None:
            extra["exit_output"] = int(exit_output)
        request = _capture_request(logits_blocks=norm(attention_blocks), probs_blocks=norm(probs_blocks),
                                   token_blocks=norm(token_blocks), final_norm=final_norm,
                                   exit_blocks=norm(exit_blocks), model_output=bool(model_output),
                                   distance_blocks=norm(distance_blocks), **extra)
        return self._core.capture(x, request)

    def forward(self, images: Any, preprocess: bool | str = "auto"):
        """The model's plain forward (C++ torch::jit), e.g. to get embeddings."""
        return self._core.forward(self.prepare(images, preprocess))

    def graph(self, **request) -> str:
        """The rewritten capture graph for a request (debugging aid): the fields of ``vitfiqa._core.CaptureRequest``
        as keywords (``final_norm`` for ``tokens_final_norm``)."""
        return self._core.graph(_capture_request(**request))


def _capture_request(final_norm: bool = True, **fields) -> _core.CaptureRequest:
    """The core's capture request, built whole from its fields (``final_norm``: ``tokens_final_norm``)."""
    return _core.CaptureRequest(tokens_final_norm=bool(final_norm), **fields)


def load(model: Any = None, options: ModelOptions | dict | None = None, *, checkpoint=None,
         **deprecated) -> QualityModel:
    """Load a ViT for quality scoring, as ``options`` (a :class:`vitfiqa.options.ModelOptions` or its dict) say:
    device, dtype; ``image_size``, ``channel_order`` ("rgb" | "bgr") and ``normalization`` override the model's
    recorded input contract; ``final_norm`` names the final LayerNorm (see :class:`QualityModel`; for
    transformers and timm models whose forward applies it after pooling, e.g. CLIP's ``post_layernorm``, it is
    found by name). The old keywords (``device=``, ...) still work for one release, with a DeprecationWarning.

    ``model`` is any route of :mod:`vitfiqa.sources`: a TorchScript file or its bytes, a ``torch.nn.Module``
    (eager, scripted or traced; Hugging Face transformers vision models and timm-layout ViTs included, their
    image size read from their config), or a preset name with its official ``checkpoint``
    (``load("cvlface_vit_b", checkpoint="model.pt")``; presets: :data:`vitfiqa.models.PRESETS`).
    None: the embedded stand-in, a small ViT trained on synthetic faces (its scores of real photos carry no
    meaning; file scoring warns)."""
    return _load(model, options, checkpoint=checkpoint, **deprecated)[0]


def _load(model, options=None, *, checkpoint=None, **deprecated):
    """:func:`load`, also returning the :class:`vitfiqa.sources.Resolved` TorchScript (what Ray ships)."""
    from .sources import post_pooling_norm, resolve

    if isinstance(options, (str, torch.device)):  # the old second positional argument, the device
        deprecated["device"], options = options, None
    changes = take_deprecated(deprecated, ModelOptions, "options", "load")
    no_unknown(deprecated, "load")
    options = ModelOptions.of(options).replace(**changes)
    if model is None:
        if checkpoint is not None:
            raise ValueError("checkpoint= goes with a preset name: vitfiqa.load('<preset>', checkpoint=...)")
        from .demo import RECOGNIZER as model
    src = resolve(model, checkpoint=checkpoint, options=options)
    qm = QualityModel(src.model, options)
    norm = post_pooling_norm(src, qm.info) if options.final_norm is None else None
    if norm is not None:  # a norm the forward applies after pooling (CLIP's post_layernorm): ViTNT's final norm
        qm = QualityModel(src.model, options.replace(final_norm=norm))
    if src.sha256 is not None:
        qm.sha256 = src.sha256
    qm.source, qm.route = src.description or qm.source, src.route
    return qm, src


def _value_range(value_range) -> list[float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"a heatmap value range is two numbers (low, high), got {value_range!r}") from None
    return [lo, hi]


def render_heatmaps(grids: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None,
                    normalize: str = "global", value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Heatmaps [B,H,W] from patch grids [B,gh,gw] (``QualityResult.heatmap_grids``), normalised as the
    official ATTN-FIQA plot script: min-max on the patch grid before the bilinear resize (``size``, default
    the grid), ``(g - lo) / (hi - lo + 1e-8)`` clipped to [0, 1]. ``normalize`` (the vocabulary of
    ``ScoreConfig.heatmap``): ``global`` (lo, hi = min, max of all grids given, or ``value_range``), ``image``
    (per grid) or ``none``.

    A data set's global normalisation (the official default over all images shown): collect the grids of
    several ``score`` calls, ``torch.cat`` them, and render them here in one call; or pass
    ``value_range=(min, max)`` of all grids."""
    t = torch.as_tensor(np.array(grids, copy=True) if isinstance(grids, np.ndarray) else grids)
    return _core.render_heatmaps(t, list(size) if size else [], str(normalize),
                                 _value_range(value_range) if value_range is not None else [])


def fuse_exits(exit_scores: torch.Tensor | np.ndarray, depths: Sequence[int], fusion: str | None = None,
               normalization: str | None = None) -> torch.Tensor:
    """EX-FIQA fusion of an [L,B] exit-score matrix collected over a whole data set.

    fusion ``mean`` = EX-FIQA-F, ``depth`` = EX-FIQA-FW (w_l proportional to the 1-based depth l; the default);
    normalization ``none`` (the default, as ``ScoreConfig.exfiqa``) | ``zscore`` | ``minmax`` per exit over all
    B images. None takes the core's default; the core checks both."""
    if isinstance(exit_scores, np.ndarray) and not exit_scores.flags.writeable:
        exit_scores = exit_scores.copy()  # e.g. a view of a pandas frame; torch wants writable memory
    t = torch.as_tensor(exit_scores, dtype=torch.float64)
    given = {k: v for k, v in (("fusion", fusion), ("normalization", normalization)) if v is not None}
    return _core.fuse_exits(t, [int(d) for d in depths], **given)
