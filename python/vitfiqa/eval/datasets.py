"""Benchmark loaders. Every loader returns an :class:`ImageSet`: image sources (paths, encoded bytes or
landmark-aligned :class:`vitfiqa.align.FaceCrop`), stable image keys, and the comparison pairs. Images are
decoded by the package's one image loader (:class:`vitfiqa.loader.ImageLoader`); a corrupt entry is
reported with its index (``dataset.errors``) and skipped unless ``strict=True``. Quality scores
(:func:`score_image_set`) and embeddings (:func:`extract_embeddings`) are computed from its uint8 batches,
normalised once for the model (:func:`vitfiqa.loader.to_model_input`). Text files may start with a
UTF-8 byte-order mark.

- insightface ``.bin`` (LFW, AgeDB-30, CALFW, CPLFW, CFP-FP): pickle of (list of encoded images, issame
  list); images 2i and 2i+1 form pair i. Read by a restricted unpickler (:class:`BinUnpickler`): a ``.bin``
  from elsewhere can never run code, only be refused.
- CR-FIQA lists (:func:`load_pair_list`): ``image_path_list.txt`` (image paths relative to the data folder)
  + ``pair_list.txt`` (``name_a name_b label`` per line, names are image file names without extension, or
  with it as CR-FIQA's XQLFW list writes them). CR-FIQA's own prepared folders (``quality_data/<ds>``, written
  by its ``feature_extraction/extract_*.py``) store the images channel-swapped: ``prepared="crfiqa"`` swaps
  them back on read (see :data:`PREPARED`).
- XQLFW / LFW-style ``pairs.txt``: ``name n1 n2`` (genuine) or ``name1 n1 name2 n2`` (impostor),
  images at ``root/name/name_%04d.jpg``.
- Adience (:func:`load_adience`): the release's tab-separated ``fold_*_data.txt`` files; every pair of images,
  genuine if the same subject.
- IJB-C 1:1 (:func:`load_ijbc`): ``meta/ijbc_face_tid_mid.txt`` (image template media),
  ``meta/ijbc_template_pair_label.txt`` (template template label), ``loose_crop/`` images aligned with the
  landmarks of ``meta/ijbc_name_5pts_score.txt``; pairs are between templates (see :func:`aggregate_templates`).
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..loader import ImageLoader, decode_items, to_model_input
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, check_batch_size
from ..preprocess import DEFAULT_IMAGE_SIZE
from .scores import Pairs, l2_normalize

log = logging.getLogger("vitfiqa.eval")


class CorruptEntry(ValueError):
    """An image or list entry that cannot be read."""


@dataclass
class Templates:
    """Image-to-template assignment of a template benchmark (IJB-C): ``template``/``media`` per image,
    ``ids`` the sorted unique template ids that the pairs index; ``detector_scores`` optional per image."""

    template: np.ndarray
    media: np.ndarray
    ids: np.ndarray
    detector_scores: np.ndarray | None = None


@dataclass
class ImageSet:
    """A list of image sources with the benchmark's comparison pairs.

    ``keys`` are the images' stable names (relative paths, or the index for a ``.bin``) by which external
    score and embedding files are matched. With ``templates`` the pairs index templates, not images."""

    name: str
    sources: Sequence
    pairs: Pairs
    strict: bool = False
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    errors: list[tuple[int, str]] = field(default_factory=list)
    keys: list[str] | None = None
    templates: Templates | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    channel_swap: bool = False  # files store B,G,R where they mean R,G,B: reversed after decoding (PREPARED)

    def __post_init__(self):
        size = (self.image_size,) * 2 if isinstance(self.image_size, int) else tuple(self.image_size or ())
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"image_size must be (height, width) in pixels, got {self.image_size!r}")
        self.image_size = (int(size[0]), int(size[1]))
        if self.keys is None:
            self.keys = [str(s) if isinstance(s, (str, os.PathLike)) else str(i) for i, s in enumerate(self.sources)]
        if len(self.keys) != len(self.sources):
            raise ValueError("one key per image source is needed")
        if self.templates is None:
            self.pairs.check(len(self.sources))
        else:
            self.pairs.check(len(self.templates.ids))

    def __len__(self) -> int:
        return len(self.sources)

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 HxWx3 RGB, decoded as :meth:`iter_batches` decodes it (resized to
        ``image_size``; high-bit-depth images scaled, see :func:`vitfiqa.preprocess.read_image`). Raises
        CorruptEntry for any unreadable image."""
        images, _, errors = decode_items([self.sources[index]], self.image_size, self.max_pixels)
        if errors:
            raise CorruptEntry(f"{self.name}: image {index} cannot be decoded: {errors[0]}")
        return self._channels(images)[0]

    def _channels(self, images: np.ndarray) -> np.ndarray:
        """Decoded uint8 [b,H,W,3] as the images mean them: channels reversed for a channel-swapped set."""
        return np.ascontiguousarray(images[..., ::-1]) if self.channel_swap else images

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                     indices: Sequence[int] | None = None) -> Iterator["LoadedBatch"]:
        """Every batch of all images (or ``indices``, cut into runs of ``batch_size``), unreadable images
        included: :class:`LoadedBatch` with the decoded uint8 images [b,H,W,3] of the readable ones. Decoding
        runs ahead on ``workers`` threads in :class:`vitfiqa.loader.ImageLoader`, the package's one image
        loader. Unreadable images are logged and recorded in ``errors`` (or raise with ``strict``)."""
        check_batch_size(batch_size)
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(order) == 0:
            return
        loader = ImageLoader([self.sources[i] for i in order], batch_size, self.image_size, workers=workers,
                             max_pixels=self.max_pixels, ids=[self.keys[i] for i in order])
        for batch in loader:
            errors = {}
            for pos in sorted(batch.errors):
                i = int(order[batch.start + pos])
                exc = CorruptEntry(f"{self.name}: image {i} cannot be decoded: {batch.errors[pos]}")
                if self.strict:
                    raise exc
                self.errors.append((i, str(exc)))
                errors[i] = str(exc)
                log.warning("%s", exc)
            all_idx = order[batch.start:batch.start + len(batch.ids)]
            images = self._channels(batch.images.numpy()) if batch.images is not None else None
            yield LoadedBatch(all_idx, all_idx[batch.ok] if batch.ok else all_idx[:0], images, errors)


@dataclass
class LoadedBatch:
    """One batch of an :class:`ImageSet`: ``indices`` of all its images, ``ok`` those decoded (``images``,
    uint8 [len(ok),H,W,3], None when none was), ``errors`` {index: reason} for the others."""

    indices: np.ndarray
    ok: np.ndarray
    images: np.ndarray | None
    errors: dict[int, str]


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


def load_bin(path: str | os.PathLike, strict: bool = False, image_size=DEFAULT_IMAGE_SIZE) -> ImageSet:
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
    return ImageSet(path.stem, bins, Pairs.consecutive(issame), strict=strict, image_size=image_size,
                    keys=[str(i) for i in range(len(bins))])


def _read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; a UTF-8 byte-order mark at the start is dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # found by benchmarks/fuzz.py: was a bare UnicodeDecodeError
        line = data[:exc.start].count(b"\n") + 1
        raise CorruptEntry(f"{path.name} line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _is_int(token: str) -> bool:
    return token.lstrip("-").isdigit()


PREPARED = {
    # how a folder of images was prepared -> whether its files are channel-swapped
    "release": False,  # the files as published (default): decoded RGB is what the official pipeline feeds
    "crfiqa": True,    # CR-FIQA's feature_extraction/extract_*.py output (quality_data/<ds>/images): written
                       # channel-swapped, read back by its FaceModel with cv2.imread and no conversion
}


def check_prepared(prepared: str | None) -> bool:
    """Whether a folder prepared as ``prepared`` (a :data:`PREPARED` name; None = ``release``) is channel-swapped."""
    key = "release" if prepared is None else prepared
    if key not in PREPARED:
        raise ValueError(f"prepared must be one of {sorted(PREPARED)}, got {prepared!r}")
    return PREPARED[key]


def load_pair_list(data_dir: str | os.PathLike, list_dir: str | os.PathLike | None = None,
                   images_file: str = "image_path_list.txt", pairs_file: str = "pair_list.txt",
                   ids: str = "auto", strict: bool = False, image_size=DEFAULT_IMAGE_SIZE,
                   prepared: str | None = None) -> ImageSet:
    """CR-FIQA list layout (``feature_extraction/extract_emb.py`` and ``ERC/erc.py``): ``list_dir`` holds
    ``image_path_list.txt`` (image paths relative to ``data_dir``, the folder the official scripts call
    ``--relative_dir``) and ``pair_list.txt`` (``a b label``: ``a``/``b`` are image file names without the
    extension, e.g. ``p_1_img_17 p_1_img_20 1``, or with it, as CR-FIQA's ``extract_xqlfw.py`` writes them).
    ``list_dir`` defaults to ``data_dir``. An image path listed again (``extract_xqlfw.py`` lists both images
    of every pair, so an image is listed once per pair it is in) is the same image: CR-FIQA's scripts write
    its file, its embedding and its score under that one name, the last listing replacing the earlier ones.

    prepared: ``"crfiqa"`` for CR-FIQA's own prepared folders (``quality_data/<ds>`` written by its
    ``feature_extraction/extract_*.py``), whose files are channel-swapped: decoded channels are reversed, so
    a model gets what the official pipeline feeds it. ``None``/``"release"``: files as published.

    ids: ``names`` (the official layout), ``indices`` (0-based positions in the image list) or ``auto``
    (names when every pair id names an image). A list whose ids cannot be image names is refused, never
    misread: ids that are not image names; and all-numeric ids when the image names are numbers too (IJB-C:
    the official IJB-C pair list holds *template* ids, use :func:`load_ijbc`), unless ``ids`` says which."""
    data_dir = Path(data_dir)
    list_dir = Path(list_dir) if list_dir is not None else data_dir
    if ids not in ("auto", "names", "indices"):
        raise ValueError("ids must be 'auto', 'names' or 'indices'")
    swap = check_prepared(prepared)
    listed = _read_lines(list_dir / images_file)
    rel = list(dict.fromkeys(listed))  # an image listed again is the same image (first position kept)
    images = [p if os.path.isabs(p) else str(data_dir / p) for p in rel]
    rows = []
    for n, line in enumerate(_read_lines(list_dir / pairs_file)):
        parts = line.split()
        if len(parts) < 3 or not _is_int(parts[2]) or int(parts[2]) not in (0, 1):
            raise CorruptEntry(f"{pairs_file} line {n + 1}: expected 'name_a name_b label(0/1)', got {line!r}")
        rows.append(parts[:3])
    if not rows:
        raise CorruptEntry(f"{pairs_file}: no pairs")
    stems: dict[str, int] = {}
    for i, p in enumerate(rel):
        stem = Path(p).stem
        if stem in stems:
            raise CorruptEntry(f"{images_file}: image name {stem!r} occurs twice ({rel[stems[stem]]!r} and {p!r});"
                               " pair names would be ambiguous")
        stems[stem] = i
    names = dict(stems)
    names.update({Path(p).name: i for i, p in enumerate(rel)})  # a pair id may carry the extension (XQLFW)
    tokens = {t for r in rows for t in r[:2]}
    numeric = all(_is_int(t) for t in tokens)
    if ids == "auto":
        unknown = sorted(tokens - set(names))
        if unknown:
            hint = (" (they look like 0-based image indices: pass ids='indices' if that is what they are)"
                    if numeric else "")
            raise CorruptEntry(f"{pairs_file}: {len(unknown)} pair ids are not image names of {images_file}, "
                               f"e.g. {unknown[0]!r}{hint}")
        if numeric and all(_is_int(s) for s in stems):
            raise CorruptEntry(f"{pairs_file}: ids and image names are all numbers, so image names cannot be told "
                               "from IJB-C template ids or indices; pass ids='names' (or 'indices'), or use "
                               "load_ijbc for an IJB-C template pair list")
        ids = "names"
    if ids == "names":
        missing = sorted(tokens - set(names))
        if missing:
            raise CorruptEntry(f"{pairs_file}: pair id {missing[0]!r} is not an image name of {images_file}")
        a = [names[r[0]] for r in rows]
        b = [names[r[1]] for r in rows]
    else:
        if not numeric:
            raise CorruptEntry(f"{pairs_file}: ids='indices' but the ids are not integers")
        if len(rel) != len(listed):
            raise CorruptEntry(f"{images_file}: ids='indices' needs every image listed once "
                               f"({len(listed) - len(rel)} lines repeat an earlier one)")
        a = [int(r[0]) for r in rows]
        b = [int(r[1]) for r in rows]
        try:
            Pairs(a, b, np.zeros(len(a), bool)).check(len(images))
        except ValueError as exc:
            raise CorruptEntry(f"{pairs_file}: {exc}") from None
    pairs = Pairs(a, b, [int(r[2]) == 1 for r in rows])
    return ImageSet(list_dir.name, images, pairs, strict=strict, image_size=image_size, keys=rel, channel_swap=swap)


def load_lfw_pairs(root: str | os.PathLike, pairs_file: str | os.PathLike, ext: str = "jpg", strict: bool = False,
                   image_size=DEFAULT_IMAGE_SIZE) -> ImageSet:
    """XQLFW / LFW ``pairs.txt``; a first line holding only counts is skipped."""
    root = Path(root)
    index: dict[str, int] = {}
    a, b, g = [], [], []

    def image(name: str, num: str) -> int:
        if not num.isdigit():
            raise CorruptEntry(f"{pairs_file} line {n + 1}: image number {num!r} is not a number")
        return index.setdefault(f"{name}/{name}_{int(num):04d}.{ext}", len(index))

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
    if not a:
        raise CorruptEntry(f"{pairs_file}: no pairs")
    keys = list(index)
    return ImageSet(Path(pairs_file).stem, [str(root / k) for k in keys], Pairs(a, b, g), strict=strict,
                    image_size=image_size, keys=keys)


def load_labelled_all_pairs(paths: Sequence[str], identities: Sequence, name: str = "adience", strict: bool = False,
                            image_size=DEFAULT_IMAGE_SIZE, keys: Sequence[str] | None = None) -> ImageSet:
    """Adience protocol: every pair of the labelled images, genuine if the same subject."""
    if len(paths) != len(identities):
        raise ValueError("one identity per image path is needed")
    return ImageSet(name, list(paths), Pairs.all_pairs(identities), strict=strict, image_size=image_size,
                    keys=None if keys is None else list(keys))


ADIENCE_COLUMNS = ("user_id", "original_image", "face_id")
ADIENCE_LAYOUTS = {
    # folder: file-name prefix of the Adience release's face crops
    "aligned": "landmark_aligned_face",
    "faces": "coarse_tilt_aligned_face",
}


def load_adience(root: str | os.PathLike, folds: Sequence[str | os.PathLike] | None = None, faces: str = "aligned",
                 name: str = "adience", strict: bool = False, image_size=DEFAULT_IMAGE_SIZE) -> ImageSet:
    """Adience from its release: tab-separated ``fold_*_data.txt`` files (header ``user_id original_image
    face_id age gender ...``; ages like ``(25, 32)`` contain spaces, so columns are split on tabs only) and
    the face crops at ``root/<faces>/<user_id>/<prefix>.<face_id>.<original_image>`` (``faces="aligned"``:
    ``landmark_aligned_face``; ``"faces"``: ``coarse_tilt_aligned_face``). Subject = (user_id, face_id);
    every pair of images, genuine if the same subject. ``folds`` default: every ``fold_*_data.txt`` in root."""
    root = Path(root)
    if faces not in ADIENCE_LAYOUTS:
        raise ValueError(f"faces must be one of {sorted(ADIENCE_LAYOUTS)}")
    fold_files = [Path(f) if os.path.isabs(f) else root / f for f in folds] if folds else \
        sorted(root.glob("fold_*_data.txt"))
    if not fold_files:
        raise FileNotFoundError(f"no Adience fold files (fold_*_data.txt) in {root}")
    keys, subjects = [], []
    for fold in fold_files:
        lines = [ln for ln in _read_lines(Path(fold))]
        header = lines[0].split("\t") if lines else []
        col = {h.strip(): i for i, h in enumerate(header)}
        if not all(c in col for c in ADIENCE_COLUMNS):
            raise CorruptEntry(f"{fold}: not an Adience fold file (tab-separated header with "
                               f"{', '.join(ADIENCE_COLUMNS)} expected, got {lines[0][:80]!r})")
        for n, line in enumerate(lines[1:], start=2):
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) < len(header):
                raise CorruptEntry(f"{fold} line {n}: {len(parts)} tab-separated fields, header has {len(header)}")
            user, image, face = (parts[col[c]] for c in ADIENCE_COLUMNS)
            if not face.isdigit() or not user or not image:
                raise CorruptEntry(f"{fold} line {n}: bad user_id/original_image/face_id in {line!r}")
            keys.append(f"{faces}/{user}/{ADIENCE_LAYOUTS[faces]}.{face}.{image}")
            subjects.append(f"{user}/{face}")
    if len(set(keys)) != len(keys):
        raise CorruptEntry(f"{name}: an image is listed twice across {[f.name for f in fold_files]}")
    return load_labelled_all_pairs([str(root / k) for k in keys], subjects, name=name, strict=strict,
                                   image_size=image_size, keys=keys)


@dataclass
class IJBCMeta:
    images: list[str]
    template: np.ndarray
    media: np.ndarray
    pairs: Pairs  # indices into the sorted unique template ids ``template_ids``
    template_ids: np.ndarray


def _int_table(path: Path, columns: int, what: str) -> np.ndarray:
    """A whitespace-separated integer table (IJB-C's 15.6 M pair lines are parsed by pandas' C reader)."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.int64, encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorruptEntry(f"{path.name}: expected '{what}' integer lines: {str(exc).splitlines()[0]}") from None
    if frame.shape[1] != columns:
        raise CorruptEntry(f"{path.name}: expected {columns} columns ({what}), got {frame.shape[1]}")
    return frame.to_numpy()


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
    raw = _int_table(meta_dir / pairs_file, 3, "template template label")
    if not np.isin(raw[:, 2], (0, 1)).all():
        raise CorruptEntry(f"{pairs_file}: labels must be 0 or 1")
    template_ids = np.unique(np.asarray(tid))
    pos_a = np.searchsorted(template_ids, raw[:, 0])
    pos_b = np.searchsorted(template_ids, raw[:, 1])
    for pos, col in ((pos_a, raw[:, 0]), (pos_b, raw[:, 1])):
        bad = (pos >= len(template_ids)) | (template_ids[np.minimum(pos, len(template_ids) - 1)] != col)
        if bad.any():
            raise CorruptEntry(f"{pairs_file}: template {col[bad][0]} has no images in {faces_file}")
    return IJBCMeta(images, np.asarray(tid), np.asarray(mid), Pairs(pos_a, pos_b, raw[:, 2] == 1), template_ids)


def read_ijbc_landmarks(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``ijbc_name_5pts_score.txt``: ``name x1 y1 ... x5 y5 score`` per line -> (names, landmarks [N,5,2],
    detector scores [N])."""
    names, pts, scores = [], [], []
    for n, line in enumerate(_read_lines(Path(path))):
        parts = line.split()
        try:
            if len(parts) != 12:
                raise ValueError
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            raise CorruptEntry(f"{Path(path).name} line {n + 1}: expected 'name' + 10 landmark coordinates + "
                               f"score, got {line[:80]!r}") from None
        names.append(parts[0]), pts.append(vals[:10]), scores.append(vals[10])
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 5, 2)
    if not np.isfinite(arr).all() or not np.isfinite(scores).all():
        raise CorruptEntry(f"{Path(path).name}: NaN or Inf landmarks or scores")
    return names, arr, np.asarray(scores, dtype=np.float64)


def load_ijbc(root: str | os.PathLike, align: bool = True, image_dir: str = "loose_crop", prefix: str = "ijbc",
              strict: bool = False, image_size=DEFAULT_IMAGE_SIZE) -> ImageSet:
    """IJB-C (or IJB-B with ``prefix="ijbb"``) 1:1 verification from the release layout: ``root/meta/`` with
    ``<prefix>_face_tid_mid.txt``, ``<prefix>_template_pair_label.txt`` and ``<prefix>_name_5pts_score.txt``,
    images in ``root/loose_crop/``. With ``align`` (the insightface IJB evaluation) each loose crop is warped
    to the 112x112 ArcFace template by its five landmarks; the detector scores are kept in
    ``templates.detector_scores`` for optional feature weighting. Pairs index ``templates.ids``."""
    root = Path(root)
    meta = load_ijbc_meta(root / "meta", f"{prefix}_face_tid_mid.txt", f"{prefix}_template_pair_label.txt")
    keys = [f"{image_dir}/{n}" for n in meta.images]
    paths = [str(root / k) for k in keys]
    scores = None
    if align:
        lm_file = root / "meta" / f"{prefix}_name_5pts_score.txt"
        names, lms, det = read_ijbc_landmarks(lm_file)
        pos = {nm: i for i, nm in enumerate(names)}
        missing = [nm for nm in meta.images if nm not in pos]
        if missing:
            raise CorruptEntry(f"{lm_file.name}: no landmarks for {len(missing)} images, e.g. {missing[0]!r}")
        order = np.asarray([pos[nm] for nm in meta.images])
        from ..align import FaceCrop

        sources = [FaceCrop(p, lms[j]) for p, j in zip(paths, order)]
        scores = det[order]
    else:
        sources = paths
    return ImageSet(root.name, sources, meta.pairs, strict=strict, image_size=image_size, keys=keys,
                    templates=Templates(meta.template, meta.media, meta.template_ids, scores))


def read_rows(features, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of an [N, D] array. A memory-mapped array (a cache on disk) is read with plain file
    reads, so the pages do not stay mapped into the process: memory stays bounded by one chunk."""
    if isinstance(features, np.memmap) and features.filename and features.flags.c_contiguous:
        stop = min(stop, len(features))
        row = int(np.prod(features.shape[1:])) * features.dtype.itemsize
        with open(features.filename, "rb") as f:
            f.seek(features.offset + start * row)
            out = np.fromfile(f, dtype=features.dtype, count=(stop - start) * row // features.dtype.itemsize)
        return out.reshape((stop - start,) + features.shape[1:])
    return np.asarray(features[start:stop])


def aggregate_templates(features, template, media, weights=None, valid=None, chunk: int = 8192):
    """IJB-C template features as the insightface and CR-FIQA evaluations build them: the mean image feature
    of each media, summed over the template's media, L2-normalised. ``features`` [N,D] may be a
    memory-mapped array: it is read in chunks of ``chunk`` rows, so memory stays O(templates x D).
    ``weights`` (e.g. detector scores) multiply each image's feature first; ``valid`` False excludes an image
    (unreadable). Returns (template_ids, float32 features [T,D]); a template with no valid image is NaN."""
    import torch

    template, media = np.asarray(template), np.asarray(media)
    n = len(template)
    if len(features) != n or len(media) != n or features.ndim != 2:
        raise ValueError("features [N,D], template and media must have one entry per image")
    if valid is None:  # rows with NaN (unreadable images) are left out
        valid = np.concatenate([np.isfinite(read_rows(features, s, s + chunk)).all(axis=1) for s in range(0, n, chunk)])
    valid = np.asarray(valid, bool)
    tids, t_idx = np.unique(template, return_inverse=True)
    _, m_idx = np.unique(np.stack([t_idx, media], 1), axis=0, return_inverse=True)
    m_idx = m_idx.reshape(-1)
    # sum over media of the media mean = sum over images of feature / (valid images in its media)
    per_media = np.bincount(m_idx, weights=valid.astype(np.float64))
    w = np.where(valid, 1.0 / np.maximum(per_media[m_idx], 1), 0.0)
    if weights is not None:
        w = w * np.asarray(weights, dtype=np.float64)
    out = torch.zeros((len(tids), features.shape[1]), dtype=torch.float64)
    for s in range(0, n, chunk):
        sel = slice(s, s + chunk)
        # a copy (np.array), so the caller's features are never modified in place
        f = torch.from_numpy(np.array(read_rows(features, s, s + chunk), dtype=np.float64))
        f = torch.nan_to_num_(f).mul_(torch.from_numpy(w[sel])[:, None])
        out.index_add_(0, torch.from_numpy(t_idx[sel].astype(np.int64)), f)
    tfeat = out.numpy()
    norms = np.linalg.norm(tfeat, axis=1, keepdims=True)
    has = np.bincount(t_idx, weights=valid.astype(np.float64), minlength=len(tids)) > 0
    tfeat = np.where(has[:, None], tfeat / np.where(norms > 0, norms, 1), np.nan).astype(np.float32)
    return tids, tfeat


def template_quality(quality, template) -> np.ndarray:
    """Template quality = min over its images' qualities (NaN, i.e. unreadable, images ignored; NaN when
    none is left), in the order of the sorted unique template ids."""
    q = np.asarray(quality, dtype=np.float64)
    _, t_idx = np.unique(np.asarray(template), return_inverse=True)
    tq = np.full(t_idx.max() + 1, np.inf)
    np.fmin.at(tq, t_idx, np.where(np.isnan(q), np.inf, q))
    tq[np.isinf(tq)] = np.nan
    return tq


def ijbc_templates(features, quality, template, media) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template features (L2-normalised sum over media of the per-media mean image feature) and template
    quality (min over its images). Returns (template_ids, features [T,D], quality [T])."""
    feats = np.asarray(features)
    if not (len(feats) == len(quality)):
        raise ValueError("features, quality, template and media must have one entry per image")
    tids, tfeat = aggregate_templates(feats, template, media)
    return tids, tfeat, template_quality(quality, template)


def score_image_set(model, dataset: ImageSet, methods=None, batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: bool = True, workers: int | None = None, **score_kwargs) -> dict[str, np.ndarray]:
    """Quality of every image of a benchmark with a :class:`vitfiqa.QualityModel`; unreadable images get
    NaN (they are listed in ``dataset.errors``). The loader's uint8 batches are normalised once, for the
    model (:func:`vitfiqa.loader.to_model_input`), and scored as they are. ``methods`` and ``score_kwargs``
    (e.g. ``config=``) as :meth:`vitfiqa.QualityModel.score` (None: the config's methods)."""
    from tqdm.auto import tqdm

    out: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(dataset), disable=not progress, desc=f"scoring {dataset.name}")
    for b in dataset.iter_batches(batch_size, workers):
        if b.images is not None:
            r = model.score(to_model_input(b.images, model), methods=methods, preprocess=False, **score_kwargs)
            for k, v in r.numpy().items():
                out.setdefault(k, np.full(len(dataset), np.nan))[b.ok] = v
        bar.update(len(b.indices))
    bar.close()
    return out


def extract_embeddings(recognizer, dataset: ImageSet, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                       indices: Sequence[int] | None = None) -> Iterator[tuple["LoadedBatch", np.ndarray | None]]:
    """Embeddings of a benchmark's images (all, or ``indices``) with a :class:`vitfiqa.recognizer.Recognizer`,
    batch by batch as the loader delivers them: ``(batch, embeddings of batch.ok)``, None when no image of
    the batch could be read (its images are in ``batch.errors`` and ``dataset.errors``). The one embedding
    loop of the package: ``vitfiqa evaluate`` collects it, ``vitfiqa reproduce`` writes each batch to its
    resumable cache."""
    for b in dataset.iter_batches(batch_size, workers, indices):
        yield b, (recognizer.embed(b.images) if b.images is not None else None)
