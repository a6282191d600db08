"""The one image loader: image sources in, uint8 batches out, whatever the sources are.

Every path from images to a model goes through it: scoring files (:func:`vitfiqa.pipeline.score_files`, and
so each Ray actor), the benchmark loaders (:meth:`vitfiqa.eval.ImageSet.iter_batches`, which feed quality
scoring and embedding extraction) and the demo study.

A source is anything :func:`load_uint8` reads: a file path, the encoded bytes of an image
file (the images of an insightface ``.bin``, bytes handed to a Ray task), a :class:`vitfiqa.align.FaceCrop`
(aligned by its five landmarks while decoding), a PIL image or a uint8 array. Each is decoded the same way
(high-bit-depth images scaled by their range, see :func:`vitfiqa.preprocess.pil_to_rgb`) and resized to the
model's input size. A source that cannot be used for any reason (missing, undecodable, truncated, above
``max_pixels``, unsupported mode) is a skip with its reason, never the end of a run: downstream it becomes a
NaN row with the reason in the ``error`` column.

Decoding overlaps with the model: worker threads (or processes) decode the next ``prefetch`` batches while the
current one is scored (Pillow releases the GIL while decoding and resizing; the C++ core releases it for the
forward pass). Batches travel as uint8 NHWC, four times fewer bytes than float32; for CUDA they are written
straight into pinned host memory and copied asynchronously, then normalised on the GPU
(:func:`to_model_input`, which applies the package's one normaliser, :func:`vitfiqa.preprocess.normalize_uint8`).
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Collection, Iterator, Sequence

import numpy as np
import torch

from .align import FaceCrop
from .options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, check_batch_size
from .preprocess import (DEFAULT_CHANNEL_ORDER, DEFAULT_IMAGE_SIZE, _hwc_uint8, normalize_uint8,
                         resize_uint8)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                              ".pgm", ".pbm"})
"""File-name endings of the image files vitfiqa reads (all decoded by Pillow; a GIF's first frame): the files
taken from a searched folder and the entries accepted in an image list (the CLI's ``--images DIR|LIST``), and
the training folder data set; compared lower-case."""

DECODE_ERRORS = (OSError, ValueError, TypeError, MemoryError)
"""What decoding one source may raise for a reason of that source alone (a skip, not the end of the run)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def source_name(source: Any, position: int) -> str:
    """How a source is named in a results table's ``path`` column: a file's path (a face crop's file), else
    ``<bytes #position>`` / ``<image #position>`` (encoded bytes or an in-memory image)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    inner = getattr(source, "source", None)  # vitfiqa.align.FaceCrop
    if isinstance(inner, (str, os.PathLike)):
        return os.fspath(inner)
    kind = "bytes" if isinstance(source, (bytes, bytearray, memoryview)) or inner is not None else "image"
    return f"<{kind} #{position}>"


def failure_reason(exc: BaseException) -> str:
    """One-line reason of a decoding failure, as it is written to the ``error`` column."""
    return str(exc).replace("\n", " ") or type(exc).__name__


def load_uint8(item: Any, size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, seen: dict | None = None) -> np.ndarray:
    """One image (path, encoded bytes, PIL image, uint8 array, or a :class:`vitfiqa.align.FaceCrop`, which is
    aligned by its five landmarks) -> uint8 HxWx3 RGB array resized (bilinear) to ``size`` (None: as it is).
    ``seen``: if given, ``seen["resized"]`` says whether the image was resized (not square or not at ``size``;
    an aligned FaceCrop is not).

    Raises FileNotFoundError / ValueError (unreadable file, above ``max_pixels``) / TypeError (wrong dtype)."""
    if isinstance(item, FaceCrop):
        return item.decode(tuple(size) if size is not None else DEFAULT_IMAGE_SIZE, max_pixels)
    arr = _hwc_uint8(item, max_pixels)
    if seen is not None:
        seen["resized"] = size is not None and arr.shape[:2] != tuple(size)
    return resize_uint8(arr, size)


def decode_items(items: Sequence[Any], size: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 strict: bool = False, count_resized: bool = False) -> tuple:
    """Decode and resize sources -> (uint8 [n_ok,H,W,3], positions of the readable ones, {position: reason}).
    Runs in a worker thread or process; one call per piece of a batch keeps task overhead small.
    strict: the first unusable source raises its exception instead (the in-memory API,
    :func:`preprocess_images`, where the caller handed over each image itself).
    count_resized: also return {} (no faces) and how many were resized (not square or not at ``size``), a
    five-tuple."""
    out = np.empty((len(items), size[0], size[1], 3), dtype=np.uint8)
    ok, errors, resized, seen = [], {}, 0, {}
    for i, item in enumerate(items):
        try:
            out[len(ok)] = load_uint8(item, size, max_pixels, seen)
            ok.append(i)
            resized += bool(seen.pop("resized", False))
        except DECODE_ERRORS as exc:
            if strict:
                raise
            errors[i] = failure_reason(exc)
    return (out[:len(ok)], ok, errors, {}, resized) if count_resized else (out[:len(ok)], ok, errors)


def decode_faces(items: Sequence[Any], size: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS
                 ) -> tuple[np.ndarray, list[int], dict[int, str], dict[int, Any]]:
    """:func:`decode_items` for sources with a face stage (:class:`vitfiqa.detect.FaceSource`: decode, detect or
    take the given landmarks, align) -> the same three plus {position: :class:`vitfiqa.detect.Face`} (also
    for a face skipped as too small, so its box and landmarks are kept)."""
    out = np.empty((len(items), size[0], size[1], 3), dtype=np.uint8)
    ok, errors, faces = [], {}, {}
    for i, item in enumerate(items):
        try:
            out[len(ok)], faces[i] = item.decode_face(size, max_pixels)
            ok.append(i)
        except DECODE_ERRORS as exc:
            errors[i] = failure_reason(exc)
            if getattr(exc, "face", None) is not None:
                faces[i] = exc.face
    return out[:len(ok)], ok, errors, faces


@dataclass
class ImageBatch:
    """One batch of the source list: sources ``[start, start+len(ids))``, named in ``ids`` (the ids given to
    the loader; else a file's path, or :func:`source_name` for bytes and in-memory images). ``images`` holds the
    decodable ones (uint8 [b,H,W,3], pinned when staged for CUDA; None when none was), at positions ``ok``
    of the batch; ``errors`` maps the other positions to the reason; ``faces`` the positions whose face was
    detected or read from a landmark file to its :class:`vitfiqa.detect.Face` (runs with a face stage)."""

    start: int
    ids: list[str]
    ok: list[int]
    images: torch.Tensor | None
    errors: dict[int, str] = field(default_factory=dict)
    faces: dict[int, Any] = field(default_factory=dict)
    resized: int = 0  # how many of ``images`` were resized (not square or not at the model's size), not aligned

    def __repr__(self) -> str:
        shape = list(self.images.shape) if self.images is not None else None
        return (f"ImageBatch(start={self.start}, {len(self.ids)} sources, {len(self.ok)} decoded {shape}, "
                f"{len(self.errors)} errors)")


_PROCESS_POOLS: dict[int, ProcessPoolExecutor] = {}


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """A per-process pool of decoding processes, kept for reuse (a Ray actor scores many batches).
    forkserver: children never inherit the parent's threads or CUDA context; the server imports vitfiqa once
    and forks each child from it, so libtorch's pages are shared, not loaded per child."""
    pool = _PROCESS_POOLS.get(workers)
    if pool is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["vitfiqa.loader"])
        pool = _PROCESS_POOLS[workers] = ProcessPoolExecutor(workers, mp_context=ctx)
    return pool


@atexit.register
def _close_pools() -> None:
    for pool in _PROCESS_POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _PROCESS_POOLS.clear()


class ImageLoader:
    """Iterate over ``sources`` in batches of ``batch_size`` (``sources[s:s+batch_size]``; the offsets in
    ``skip`` are left out), decoding ``prefetch`` batches ahead on ``workers`` threads (or processes). Sources
    that cannot be used do not stop the run: they are reported in :attr:`ImageBatch.errors`.

    ids: the names of the sources in :attr:`ImageBatch.ids` (default: :func:`source_name`).
    start: added to every batch's ``start`` (a slice of a longer list).
    processes=True decodes in worker processes: Pillow's decoder runs without the GIL, but opening, converting
    and copying an image holds it for about as long again (measured: ~0.25 of ~0.5 ms for a 112x112 JPEG), so
    threads top out near 2-4k images/s per Python process, fewer than a GPU can score. Sources then travel to
    the workers pickled: paths are cheap, encoded bytes are copied once."""

    def __init__(self, sources: Sequence[Any], batch_size: int = DEFAULT_BATCH_SIZE,
                 size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                 workers: int | None = None, prefetch: int = 2, pin_memory: bool = False, start: int = 0,
                 processes: bool = False, skip: Collection[int] = (), max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 ids: Sequence[str] | None = None):
        check_batch_size(batch_size)
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        if size is None or len(size) != 2 or min(int(v) for v in size) <= 0:
            raise ValueError(f"size must be (height, width) in pixels, got {size!r}")
        self.sources = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in sources]
        if ids is not None and len(ids) != len(self.sources):
            raise ValueError(f"{len(ids)} ids for {len(self.sources)} sources")
        self.ids = [str(i) for i in ids] if ids is not None else [source_name(s, start + i)
                                                                   for i, s in enumerate(self.sources)]
        self.batch_size = batch_size
        self.size = (int(size[0]), int(size[1]))
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.start = start
        self.processes = processes
        self.max_pixels = max_pixels
        self.skip = frozenset(skip)  # batch offsets (into sources) already done, e.g. committed to a results table
        # Sources with a face stage (vitfiqa.detect.FaceSource) are detected / aligned while decoding.
        self.faces = bool(self.sources) and all(hasattr(s, "decode_face") for s in self.sources)

    def __len__(self) -> int:
        return len(range(0, len(self.sources), self.batch_size)) - len(self.skip)

    def __iter__(self) -> Iterator[ImageBatch]:
        offsets = [s for s in range(0, len(self.sources), self.batch_size) if s not in self.skip]
        threads = None if self.processes else ThreadPoolExecutor(self.workers, thread_name_prefix="vitfiqa-decode")
        pool = threads or _process_pool(self.workers)
        # Each batch is cut into one piece per worker, so even a single batch is decoded in parallel.
        step = max(1, -(-self.batch_size // self.workers))
        try:
            pending: deque = deque()
            it = iter(offsets)

            def submit() -> None:
                offset = next(it, None)
                if offset is not None:
                    chunk = self.sources[offset:offset + self.batch_size]
                    decode = decode_faces if self.faces else decode_items
                    extra = () if self.faces else (False, True)  # decode_items: strict=False, count_resized
                    pending.append((offset, len(chunk), [pool.submit(decode, chunk[i:i + step], self.size,
                                                                     self.max_pixels, *extra)
                                                         for i in range(0, len(chunk), step)]))

            for _ in range(self.prefetch):
                submit()
            while pending:
                offset, n, futures = pending.popleft()
                submit()  # keep `prefetch` batches decoding while this one is assembled and scored
                yield self._assemble(offset, n, [f.result() for f in futures], step)
        finally:
            if threads is not None:
                threads.shutdown(wait=True, cancel_futures=True)

    def _assemble(self, offset: int, n: int, pieces: list, step: int) -> ImageBatch:
        ok = [p * step + i for p, piece in enumerate(pieces) for i in piece[1]]
        errors = {p * step + i: e for p, piece in enumerate(pieces) for i, e in piece[2].items()}
        faces = {p * step + i: f for p, piece in enumerate(pieces) if len(piece) > 3 for i, f in piece[3].items()}
        images = None
        if ok:
            h, w = self.size
            images = torch.empty((len(ok), h, w, 3), dtype=torch.uint8, pin_memory=self.pin_memory)
            view = images.numpy()
            j = 0
            for piece in pieces:
                arr = piece[0]
                view[j:j + len(arr)] = arr
                j += len(arr)
        return ImageBatch(self.start + offset, self.ids[offset:offset + n], ok, images, errors, faces,
                          resized=sum(piece[4] for piece in pieces if len(piece) > 4))


def to_model_input(images: torch.Tensor | np.ndarray, model) -> torch.Tensor:
    """uint8 RGB NHWC batch -> the model's float NCHW input on its device and dtype, in its channel order and
    normalisation (``model``: anything with ``device``, ``dtype``, ``channel_order`` and ``normalization``: a
    :class:`vitfiqa.QualityModel` or a :class:`vitfiqa.recognizer.Recognizer`). Copied non-blocking from
    pinned memory; normalised on the model's device."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    x = x.to(model.device, non_blocking=x.is_pinned())
    return normalize_uint8(x, model.dtype, model.channel_order, model.normalization)


def preprocess_images(images: Any, size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                      channel_order: str = DEFAULT_CHANNEL_ORDER, normalization: dict | None = None) -> torch.Tensor:
    """uint8 RGB images (one or a sequence of HWC arrays, PIL images or paths; or an NHWC uint8 array) ->
    float32 [B,3,H,W] tensor resized (bilinear) to ``size``, normalised as :func:`normalize_uint8`."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        items = [images]
    if len(items) == 0:
        raise ValueError("no images given")
    out, _, _ = decode_items(items, size, strict=True)  # an image of the caller's that cannot be used raises
    return normalize_uint8(torch.from_numpy(out), channel_order=channel_order, normalization=normalization)


def as_batch(images: Any, preprocess: bool | str = "auto", size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE,
             channel_order: str = DEFAULT_CHANNEL_ORDER, normalization: dict | None = None) -> torch.Tensor:
    """Normalise any supported image input to a float [B,3,H,W] tensor (not yet on the model's device).
    ``size`` may be a callable giving the size, asked only when uint8 images need resizing."""
    def prep(x):
        return preprocess_images(x, size() if callable(size) else size, channel_order, normalization)

    if isinstance(images, torch.Tensor):
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f"image tensors must be [B,3,H,W] or [3,H,W], got shape {tuple(images.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[1] != 3 and x.shape[-1] == 3:  # NHWC uint8
                return prep(x.cpu().numpy())
            return prep(x.permute(0, 2, 3, 1).cpu().numpy())
        if not x.is_floating_point():
            raise TypeError(f"image tensors must be floating point (or uint8 to be preprocessed), got {x.dtype}")
        if preprocess is True:
            raise ValueError("preprocess=True needs uint8 images; float tensors are taken as already preprocessed")
        return x
    if preprocess is False:
        raise TypeError("with preprocess=False, images must be a float [B,3,H,W] torch.Tensor")
    if isinstance(images, np.ndarray) and images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.ndim in (3, 4) and images.shape[-3] == 3:
            return as_batch(torch.from_numpy(np.ascontiguousarray(images)), preprocess=False, size=size)
        raise TypeError(f"NumPy images must be uint8 HWC/NHWC (or float CHW/NCHW preprocessed), got {images.dtype} {images.shape}")
    return prep(images)


__all__ = ["IMAGE_EXTENSIONS", "ImageBatch", "ImageLoader", "decode_items", "decode_faces", "load_uint8", "preprocess_images",
           "as_batch", "is_image_file", "source_name",
           "to_model_input", "failure_reason", "DECODE_ERRORS"]
