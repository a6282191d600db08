"""Benchmark loaders. Images are decoded lazily and streamed in batches; a corrupt entry is reported with
its index (``dataset.errors``) and skipped unless ``strict=True``.

- insightface ``.bin`` (LFW, AgeDB-30, CALFW, CPLFW, CFP-FP): pickle of (list of encoded images, issame
  list); images 2i and 2i+1 form pair i. Read by a restricted unpickler (:class:`BinUnpickler`): a ``.bin``
  from elsewhere can never run code, only be refused.
- CR-FIQA folder layout: ``image_path_list.txt`` (one image path per line) + ``pair_list.txt``
  (``i j label`` per line, 0-based indices into the image list).
- XQLFW / LFW-style ``pairs.txt``: ``name n1 n2`` (genuine) or ``name1 n1 name2 n2`` (impostor),
  images at ``root/name/name_%04d.jpg``.
- Adience-style labelled list: every pair, genuine if same subject.
- IJB-C 1:1: ``ijbc_face_tid_mid.txt`` (image template media) + ``ijbc_template_pair_label.txt``
  (template template label); see :func:`ijbc_templates`.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..preprocess import DEFAULT_MAX_PIXELS, load_uint8
from .scores import Pairs, l2_normalize

log = logging.getLogger("vitfiqa.eval")


class CorruptEntry(ValueError):
    """An image or list entry that cannot be read."""


@dataclass
class ImageSet:
    """A list of image sources (encoded bytes or paths) with the benchmark's comparison pairs."""

    name: str
    sources: Sequence
    pairs: Pairs
    strict: bool = False
    image_size: tuple[int, int] | None = (112, 112)
    errors: list[tuple[int, str]] = field(default_factory=list)
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.sources)

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 HxWx3 RGB (resized to ``image_size``; high-bit-depth images scaled, see
        :func:`vitfiqa.preprocess.read_image`). Raises CorruptEntry for any unreadable image."""
        try:
            return load_uint8(self.sources[index], self.image_size, self.max_pixels)
        except (OSError, ValueError, TypeError, MemoryError) as exc:
            raise CorruptEntry(f"{self.name}: image {index} cannot be decoded: {exc}") from None

    def batches(self, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, uint8 images [b,H,W,3]); unreadable images are logged, recorded in ``errors``
        and skipped (or raise with ``strict``)."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        idx, imgs = [], []
        for i in range(len(self)):
            try:
                imgs.append(self.load(i))
                idx.append(i)
            except CorruptEntry as exc:
                if self.strict:
                    raise
                self.errors.append((i, str(exc)))
                log.warning("%s", exc)
            if len(imgs) == batch_size:
                yield np.asarray(idx), np.stack(imgs)
                idx, imgs = [], []
        if imgs:
            yield np.asarray(idx), np.stack(imgs)


class UnsafeBinFile(CorruptEntry):
    """A ``.bin`` pickle that asks for something insightface never writes (a class, a function call): refused
    before anything it names is called."""


class _BoolDType:
    """Stands for ``numpy.dtype('b1')`` while unpickling; its state is checked, never handed to NumPy."""

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags) of a plain bool dtype; a
        # Python 2 pickle read with encoding="bytes" gives the byte order as bytes.
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("|", b"|")
                and all(v is None for v in state[2:5])):
            raise UnsafeBinFile(f"unexpected NumPy dtype state {state!r:.80}")


class _BoolArray:
    """Stands for a 1-D NumPy bool array while unpickling (``_reconstruct`` + ``__setstate__``)."""

    value: np.ndarray | None = None

    def __setstate__(self, state):
        # (version, shape, dtype, Fortran order, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple) and len(state[1]) == 1
                and isinstance(state[2], _BoolDType) and isinstance(state[4], (bytes, bytearray))):
            raise UnsafeBinFile("a NumPy array in a .bin must be a 1-D bool array")
        n = state[1][0]
        if not isinstance(n, int) or n != len(state[4]):
            raise UnsafeBinFile(f"NumPy bool array of {n!r} elements holds {len(state[4])} bytes")
        self.value = np.frombuffer(bytes(state[4]), dtype=np.uint8) != 0


def _np_dtype(name, align=False, copy=True):
    if name not in ("b1", b"b1", "?", b"?"):
        raise UnsafeBinFile(f"NumPy dtype {name!r:.40} in a .bin (only bool arrays are allowed)")
    return _BoolDType()


def _np_reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise UnsafeBinFile("NumPy _reconstruct of something other than ndarray")
    return _BoolArray()


def _np_frombuffer(buf, dtype, shape, order):  # NumPy >= 1.16 with pickle protocol 5
    if not isinstance(dtype, _BoolDType) or not isinstance(buf, (bytes, bytearray)) or shape != (len(buf),):
        raise UnsafeBinFile("a NumPy array in a .bin must be a 1-D bool array")
    arr = _BoolArray()
    arr.value = np.frombuffer(bytes(buf), dtype=np.uint8) != 0
    return arr


def _np_scalar(dtype, data):  # a NumPy bool scalar (np.bool_), as list-building scripts sometimes leave them
    if not isinstance(dtype, _BoolDType) or not isinstance(data, (bytes, bytearray)) or len(data) != 1:
        raise UnsafeBinFile("a NumPy scalar in a .bin must be a bool")
    return data != b"\x00"


def _codecs_encode(text, encoding="utf-8"):  # how Python 3 pickles bytes at protocols 0-2
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeBinFile("_codecs.encode in a .bin is only allowed as the latin1 encoding of a string")
    return text.encode("latin1")


_NDARRAY = object()  # what the unpickler gets for numpy.ndarray: only a marker that _np_reconstruct accepts

# Everything a pickle may name, and what it gets instead of the real object: checked stand-ins, never the real
# callables. Lists, tuples, bytes, str, ints and bools need no global at all.
_BIN_GLOBALS = {
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("_codecs", "encode"): _codecs_encode,
}


class BinUnpickler(pickle.Unpickler):
    """Unpickler for insightface ``.bin`` files: admits only what their writers produce — a pair of (list or
    tuple of encoded images as bytes, list or tuple of bools (Python or NumPy) or a 1-D NumPy bool array). Any other global
    (a class, a function: the way a pickle runs code) raises :class:`UnsafeBinFile` before it is looked up."""

    def find_class(self, module, name):
        try:
            return _BIN_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeBinFile(f"refused: the .bin asks for {module}.{name}, which an insightface .bin never "
                                "contains (only bytes, bools and NumPy bool arrays are allowed)") from None

    def persistent_load(self, pid):
        raise UnsafeBinFile("refused: persistent ids are not part of an insightface .bin")


def read_bin_pickle(file, name: str = ".bin") -> tuple[list[bytes], list[bool]]:
    """(encoded images, issame) from an open insightface ``.bin`` file, through :class:`BinUnpickler`.
    Raises :class:`UnsafeBinFile` for a pickle that names anything else and :class:`CorruptEntry` for one
    that is not a ``.bin`` at all; no code from the file runs in either case."""
    try:
        obj = BinUnpickler(file, encoding="bytes").load()
    except UnsafeBinFile as exc:
        raise UnsafeBinFile(f"{name}: {exc}") from None
    except Exception as exc:  # truncated or not a pickle: pickle raises many types
        raise CorruptEntry(f"{name} is not an insightface .bin file (pickle of images and issame list): "
                           f"{type(exc).__name__}: {exc}"[:300]) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise CorruptEntry(f"{name} is not an insightface .bin file: expected (images, issame), got "
                           f"{type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise CorruptEntry(f"{name}: the images must be a list of encoded image bytes")
    if isinstance(issame, _BoolArray) and issame.value is not None:
        flags = [bool(v) for v in issame.value]
    elif isinstance(issame, (list, tuple)) and all(type(v) is bool for v in issame):
        flags = list(issame)
    else:
        raise CorruptEntry(f"{name}: issame must be a list of bools or a NumPy bool array")
    return [bytes(b) for b in bins], flags


def load_bin(path: str | os.PathLike, strict: bool = False, image_size=(112, 112)) -> ImageSet:
    """insightface ``.bin`` verification set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    with open(path, "rb") as f:
        bins, issame = read_bin_pickle(f, str(path))
    if len(bins) != 2 * len(issame):
        raise CorruptEntry(f"{path}: {len(bins)} images for {len(issame)} pairs (expected twice as many)")
    if not issame:
        raise CorruptEntry(f"{path}: no pairs")
    return ImageSet(path.stem, bins, Pairs.consecutive(issame), strict=strict, image_size=image_size)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # found by benchmarks/fuzz.py: was a bare UnicodeDecodeError
        line = data[:exc.start].count(b"\n") + 1
        raise CorruptEntry(f"{path.name} line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def load_pair_list(root: str | os.PathLike, images_file: str = "image_path_list.txt",
                   pairs_file: str = "pair_list.txt", strict: bool = False, image_size=(112, 112)) -> ImageSet:
    """CR-FIQA layout: image paths (relative to ``root`` unless absolute) and ``i j label`` pairs."""
    root = Path(root)
    images = [p if os.path.isabs(p) else str(root / p) for p in _read_lines(root / images_file)]
    a, b, g = [], [], []
    for n, line in enumerate(_read_lines(root / pairs_file)):
        parts = line.split()
        try:
            i, j, lab = int(parts[0]), int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise CorruptEntry(f"{pairs_file} line {n + 1}: expected 'i j label', got {line!r}") from None
        a.append(i), b.append(j), g.append(lab == 1)
    pairs = Pairs(a, b, g).check(len(images))
    return ImageSet(root.name, images, pairs, strict=strict, image_size=image_size)


def load_lfw_pairs(root: str | os.PathLike, pairs_file: str | os.PathLike, ext: str = "jpg", strict: bool = False,
                   image_size=(112, 112)) -> ImageSet:
    """XQLFW / LFW ``pairs.txt``; a first line holding only counts is skipped."""
    root = Path(root)
    index: dict[str, int] = {}
    a, b, g = [], [], []

    def image(name: str, num: str) -> int:
        p = str(root / name / f"{name}_{int(num):04d}.{ext}")
        return index.setdefault(p, len(index))

    for n, line in enumerate(_read_lines(Path(pairs_file))):
        parts = line.split()
        if n == 0 and all(p.isdigit() for p in parts):
            continue
        if len(parts) == 3:
            a.append(image(parts[0], parts[1])), b.append(image(parts[0], parts[2])), g.append(True)
        elif len(parts) == 4:
            a.append(image(parts[0], parts[1])), b.append(image(parts[2], parts[3])), g.append(False)
        else:
            raise CorruptEntry(f"{pairs_file} line {n + 1}: expected 3 or 4 fields, got {line!r}")
    return ImageSet(Path(pairs_file).stem, list(index), Pairs(a, b, g), strict=strict, image_size=image_size)


def load_labelled_all_pairs(paths: Sequence[str], identities: Sequence, name: str = "adience", strict: bool = False,
                            image_size=(112, 112)) -> ImageSet:
    """Adience protocol: every pair of the labelled images, genuine if the same subject."""
    if len(paths) != len(identities):
        raise ValueError("one identity per image path is needed")
    return ImageSet(name, list(paths), Pairs.all_pairs(identities), strict=strict, image_size=image_size)


@dataclass
class IJBCMeta:
    images: list[str]
    template: np.ndarray
    media: np.ndarray
    pairs: Pairs  # indices into the sorted unique template ids ``template_ids``
    template_ids: np.ndarray


def load_ijbc_meta(meta_dir: str | os.PathLike, faces_file: str = "ijbc_face_tid_mid.txt",
                   pairs_file: str = "ijbc_template_pair_label.txt") -> IJBCMeta:
    """IJB-C 1:1 meta files: ``image template media`` lines and ``template template label`` lines."""
    meta_dir = Path(meta_dir)
    images, tid, mid = [], [], []
    for n, line in enumerate(_read_lines(meta_dir / faces_file)):
        parts = line.split()
        try:
            images.append(parts[0]), tid.append(int(parts[1])), mid.append(int(parts[2]))
        except (IndexError, ValueError):
            raise CorruptEntry(f"{faces_file} line {n + 1}: expected 'image template media', got {line!r}") from None
    try:
        raw = np.loadtxt(meta_dir / pairs_file, dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"{pairs_file}: {exc}") from None
    if raw.shape[1] != 3:
        raise CorruptEntry(f"{pairs_file}: expected 3 columns, got {raw.shape[1]}")
    template_ids = np.unique(np.asarray(tid))
    pos_a = np.searchsorted(template_ids, raw[:, 0])
    pos_b = np.searchsorted(template_ids, raw[:, 1])
    for pos, col in ((pos_a, raw[:, 0]), (pos_b, raw[:, 1])):
        bad = (pos >= len(template_ids)) | (template_ids[np.minimum(pos, len(template_ids) - 1)] != col)
        if bad.any():
            raise CorruptEntry(f"{pairs_file}: template {col[bad][0]} has no images in {faces_file}")
    return IJBCMeta(images, np.asarray(tid), np.asarray(mid), Pairs(pos_a, pos_b, raw[:, 2] == 1), template_ids)


def ijbc_templates(features, quality, template, media) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template features (L2-normalised sum over media of the per-media mean image feature) and template
    quality (min over its images). Returns (template_ids, features [T,D], quality [T])."""
    feats = np.asarray(features, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    template, media = np.asarray(template), np.asarray(media)
    if not (len(feats) == len(q) == len(template) == len(media)):
        raise ValueError("features, quality, template and media must have one entry per image")
    tids, t_idx = np.unique(template, return_inverse=True)
    tm, tm_idx = np.unique(np.stack([t_idx, media], 1), axis=0, return_inverse=True)
    tm_idx = tm_idx.reshape(-1)
    media_sum = np.zeros((len(tm), feats.shape[1]))
    np.add.at(media_sum, tm_idx, feats)
    media_mean = media_sum / np.bincount(tm_idx, minlength=len(tm))[:, None]
    tfeat = np.zeros((len(tids), feats.shape[1]))
    np.add.at(tfeat, tm[:, 0], media_mean)
    tq = np.full(len(tids), np.inf)
    np.minimum.at(tq, t_idx, q)
    return tids, l2_normalize(tfeat), tq


def score_image_set(model, dataset: ImageSet, methods=("attn", "vitnt"), batch_size: int = 64,
                    progress: bool = True, **score_kwargs) -> dict[str, np.ndarray]:
    """Quality of every image of a benchmark with a :class:`vitfiqa.QualityModel`; unreadable images get
    NaN (they are listed in ``dataset.errors``)."""
    from tqdm.auto import tqdm

    out: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(dataset), disable=not progress, desc=f"scoring {dataset.name}")
    for idx, imgs in dataset.batches(batch_size):
        r = model.score(list(imgs), methods=methods, **score_kwargs)
        for k, v in r.numpy().items():
            out.setdefault(k, np.full(len(dataset), np.nan))[idx] = v
        bar.update(len(idx))
    bar.close()
    return out


