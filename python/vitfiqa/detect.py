"""Faces from photos: the bundled five-landmark detector, the primary-face rule, and the face stage of the
scoring pipeline (detect -> pick -> align -> score).

>>> import vitfiqa
>>> faces = vitfiqa.detect_faces(["group.jpg", "portrait.jpg"])   # per image, a list of Face
>>> face = vitfiqa.primary_face(faces[0], image_shape)             # or None
>>> crop = vitfiqa.align.align_face(image, face.landmarks)         # uint8 112x112x3, insightface's pixels

The detector is YuNet (Wu, Peng and Yu 2023; MIT licence, the OpenCV Zoo's
``face_detection_yunet_2023mar.onnx``, shipped in ``vitfiqa/assets`` with its licence; nothing is downloaded)
run by OpenCV's ``cv2.FaceDetectorYN``. It returns a box, five landmarks (left eye, right eye, nose tip, left
and right mouth corner, in image left-to-right order: the order of the ArcFace template) and a confidence.

Rules (module constants, recorded in every results table that uses them):

- Files are turned upright by their EXIF orientation tag first (as ``cv2.imread`` does); boxes and landmarks
  refer to the upright photo.
- Photos whose longer side exceeds :data:`DETECT_SIZE` (640 px) are shrunk to it for detection (YuNet is
  trained for faces of about 10 to 300 px); boxes and landmarks are given in the photo's own pixels, and the
  face is aligned from the full-resolution photo.
- :func:`detect_faces` lists detections with confidence >= :data:`MIN_SCORE` (0.5).
- The **primary face** (:func:`primary_face`) is the *confident* detection (confidence >=
  :data:`CONFIDENT_SCORE`, 0.8) whose box centre is nearest the image centre. ``all_faces`` scores every
  confident detection, one row each, named ``<image>#<k>`` (k = 0, 1, ... in the detector's order).
- A face whose inter-eye distance (between the two eye landmarks, in the photo's pixels) is below
  :data:`MIN_EYE_DISTANCE` (20 px; a 112x112 ArcFace crop puts the eyes 35 px apart, so below 20 px the crop
  is upsampled more than 1.75x) is skipped with the reason ``face too small``; a photo without a confident
  detection is skipped with ``no face found``.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .options import DEFAULT_MAX_PIXELS

DETECTOR_FILE = Path(__file__).resolve().parent / "assets" / "face_detection_yunet_2023mar.onnx"
DETECT_SIZE = 640
MIN_SCORE = 0.5
CONFIDENT_SCORE = 0.8
MIN_EYE_DISTANCE = 20.0
NMS_THRESHOLD = 0.3
TOP_K = 5000

NO_FACE = "no face found"
TOO_SMALL = "face too small"

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
FACE_COLUMNS = ("face_x", "face_y", "face_w", "face_h", "face_score", "eye_distance",
                *(f"{n}_{c}" for n in LANDMARK_NAMES for c in "xy"))
"""The columns a results table gets when faces are detected or read from a landmark file: the box (x, y, w, h
in the photo's pixels; NaN from a landmark file), the detector's confidence (the file's score), the
inter-eye distance and the five landmarks."""


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (x, y, w, h in the photo's pixels), ``landmarks`` (five (x, y): left eye,
    right eye, nose tip, left and right mouth corner), the detector's confidence ``score``."""

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float

    def __post_init__(self):
        box = tuple(float(v) for v in self.box)
        lm = np.asarray(self.landmarks, dtype=np.float64).reshape(-1)
        if len(box) != 4 or lm.shape != (10,):
            raise ValueError(f"a face needs a box (x, y, w, h) and five (x, y) landmarks, got {len(box)} and "
                             f"{lm.size} values")
        if not np.isfinite(lm).all():
            raise ValueError("face landmarks contain NaN or Inf")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", tuple((float(lm[2 * i]), float(lm[2 * i + 1])) for i in range(5)))
        object.__setattr__(self, "score", float(self.score))

    @property
    def eye_distance(self) -> float:
        """Distance between the two eye landmarks, in the photo's pixels."""
        (x0, y0), (x1, y1) = self.landmarks[:2]
        return math.hypot(x1 - x0, y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the box (of the landmarks when the box is unknown)."""
        x, y, w, h = self.box
        if all(math.isfinite(v) for v in self.box):
            return x + w / 2.0, y + h / 2.0
        lm = np.asarray(self.landmarks)
        return float(lm[:, 0].mean()), float(lm[:, 1].mean())

    def row(self) -> dict[str, float]:
        """This face as the :data:`FACE_COLUMNS` of a results table row."""
        out = dict(zip(FACE_COLUMNS[:6], (*self.box, self.score, self.eye_distance)))
        for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks):
            out[f"{name}_x"], out[f"{name}_y"] = x, y
        return out


_LOCAL = threading.local()


def _detector():
    """This thread's ``cv2.FaceDetectorYN`` (OpenCV's detectors are not shared between threads)."""
    det = getattr(_LOCAL, "detector", None)
    if det is None:
        import cv2

        if not DETECTOR_FILE.is_file():
            raise FileNotFoundError(f"the bundled face detector is missing: {DETECTOR_FILE} (reinstall vitfiqa)")
        level = cv2.utils.logging.getLogLevel()
        # OpenCV 5 notes (once per network, at its first run) that its new graph engine ignores targets.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            det = cv2.FaceDetectorYN.create(str(DETECTOR_FILE), "", (DETECT_SIZE, DETECT_SIZE), MIN_SCORE,
                                            NMS_THRESHOLD, TOP_K)
            det.setInputSize((32, 32))
            det.detect(np.zeros((32, 32, 3), np.uint8))
        finally:
            cv2.utils.logging.setLogLevel(level)
        _LOCAL.detector = det
    return det


def detect_array(image: np.ndarray, min_score: float = MIN_SCORE) -> list[Face]:
    """Faces in one uint8 HxWx3 RGB image, confidence >= ``min_score``, highest confidence first."""
    import cv2

    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"detection needs a uint8 HxWx3 RGB image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if min(h, w) < 1:
        raise ValueError(f"empty image {img.shape}")
    scale = min(1.0, DETECT_SIZE / max(h, w))
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    sx, sy = w / bgr.shape[1], h / bgr.shape[0]  # exact back-mapping of the rounded size
    det = _detector()
    det.setInputSize((bgr.shape[1], bgr.shape[0]))
    det.setScoreThreshold(float(min_score))
    _, found = det.detect(bgr)
    faces = []
    for f in ([] if found is None else found.astype(np.float64)):
        box = (f[0] * sx, f[1] * sy, f[2] * sx, f[3] * sy)
        lm = f[4:14].reshape(5, 2) * (sx, sy)
        faces.append(Face(box, lm, f[14]))
    faces.sort(key=lambda fc: -fc.score)
    return faces


def _image(item: Any, max_pixels: int | None) -> np.ndarray:
    """A photo as uint8 HxWx3 RGB; files and encoded bytes are turned upright by their EXIF orientation."""
    from .preprocess import _hwc_uint8, read_image

    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        return np.ascontiguousarray(read_image(item, max_pixels, exif_orientation=True))
    return np.ascontiguousarray(_hwc_uint8(item, max_pixels))


def detect_faces(images, min_score: float = MIN_SCORE, max_pixels: int | None = DEFAULT_MAX_PIXELS
                 ) -> list[list[Face]]:
    """Detect faces in ``images`` (a list of file paths, encoded bytes, PIL images or uint8 arrays; a single one
    is taken as a list of one) -> per image, a list of :class:`Face` (confidence >= ``min_score``, highest
    first; empty when none). An image that cannot be read raises (this is the in-memory API; the scoring
    pipeline turns such an image into a skipped row instead)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3)) or hasattr(images, "getpixel"):
        images = [images]
    return [detect_array(_image(im, max_pixels), min_score) for im in images]


def primary_face(faces: Sequence[Face], image_shape: tuple[int, ...], min_score: float = CONFIDENT_SCORE
                 ) -> Face | None:
    """The primary face of a photo of ``image_shape`` (H, W, ...): among the confident detections (confidence
    >= ``min_score``), the one whose box centre is nearest the image centre (the higher confidence on a tie);
    None when there is none."""
    h, w = image_shape[:2]
    cands = [f for f in faces if f.score >= min_score]
    if not cands:
        return None
    cy, cx = h / 2.0, w / 2.0
    return min(cands, key=lambda f: (math.hypot(f.center[0] - cx, f.center[1] - cy), -f.score))


class FaceSkip(ValueError):
    """A photo skipped for a reason of its face (no face found, face too small); ``face`` is the face found,
    if any, so its box and landmarks still reach the results table."""

    def __init__(self, reason: str, face: Face | None = None):
        super().__init__(reason)
        self.face = face


@dataclass(frozen=True)
class FaceSource:
    """A scoring source with a face stage: decoding it yields the aligned face and the :class:`Face` it came
    from. ``face`` None: detect and take the primary face; else align by that face (one row of an all-faces
    run, or a landmark file's row). ``reason``: a skip already known (e.g. no landmarks for this image)."""

    source: Any
    face: Face | None = None
    reason: str | None = None

    def decode_face(self, size: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS
                    ) -> tuple[np.ndarray, Face]:
        from .align import align_face

        if self.reason:
            raise FaceSkip(self.reason, self.face)
        image = _image(self.source, max_pixels)
        face = self.face
        if face is None:
            face = primary_face(detect_array(image), image.shape)
            if face is None:
                raise FaceSkip(NO_FACE)
        if face.eye_distance < MIN_EYE_DISTANCE:
            raise FaceSkip(f"{TOO_SMALL} (inter-eye distance {face.eye_distance:.1f} px < {MIN_EYE_DISTANCE:g})",
                           face)
        return align_face(image, face.landmarks, size, max_pixels=None), face

    def to_record(self) -> dict:
        """Plain values (for Ray Data rows): the source, the face as 15 floats (empty when None), the reason."""
        f = self.face
        return {"source": self.source, "face": [] if f is None else [*f.box, f.score,
                                                                       *np.ravel(f.landmarks).tolist()],
                "reason": self.reason or ""}

    @classmethod
    def from_record(cls, source, face: Sequence[float], reason: str) -> "FaceSource":
        f = None if len(face) == 0 else Face(tuple(face[:4]), np.asarray(face[5:15]).reshape(5, 2), face[4])
        return cls(source, f, reason or None)


def face_rules() -> dict:
    """The face stage's rules, recorded in a results table's run description."""
    return {"detector": DETECTOR_FILE.name, "detect_size": DETECT_SIZE, "confident_score": CONFIDENT_SCORE,
            "min_eye_distance": MIN_EYE_DISTANCE, "nms_threshold": NMS_THRESHOLD}


def _match_landmarks(names: Sequence[str], sources: Sequence, path: str | os.PathLike):
    """Rows of a landmark file (``name x1 y1 ... x5 y5 score``, the IJB-C layout) for each named source: by
    the name as given, else relative to the folder all sources share, else the file name alone (when that is
    unique in the file)."""
    from .eval.datasets import read_ijbc_landmarks

    file_names, lms, scores = read_ijbc_landmarks(path)
    exact = {n: i for i, n in enumerate(file_names)}
    base: dict[str, int | None] = {}
    for i, n in enumerate(file_names):
        b = os.path.basename(n)
        base[b] = None if b in base else i
    is_path = [isinstance(s, (str, os.PathLike)) for s in sources]
    root = None
    if any(is_path):
        try:
            root = os.path.commonpath([os.path.dirname(os.path.abspath(os.fspath(s)))
                                       for s, p in zip(sources, is_path) if p])
        except ValueError:
            root = None
    out = []
    for name, src, p in zip(names, sources, is_path):
        keys = [name]
        if p:
            full = os.path.abspath(os.fspath(src))
            keys += [os.fspath(src), full] + ([os.path.relpath(full, root)] if root else [])
        j = next((exact[k] for k in keys if k in exact), None)
        if j is None:
            j = base.get(os.path.basename(name))
        out.append(None if j is None else Face((math.nan,) * 4, lms[j], scores[j]))
    return out


def face_sources(sources: Sequence, names: Sequence[str], detect: bool = False, all_faces: bool = False,
                 landmarks: str | os.PathLike | None = None, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[list[FaceSource], list[str]]:
    """The face stage's sources and row names for ``sources`` (paths or encoded bytes) named ``names``:

    - ``landmarks`` (a file): each image aligned by its row of the file (no detector); an image without a row
      is skipped with that reason;
    - ``detect``: each image's primary face, detected while decoding (names unchanged);
    - ``detect`` and ``all_faces``: every confident face, one row each named ``<name>#<k>``; detection runs
      here, first, on ``workers`` threads, so the row list is known before scoring; an image without a
      confident face (or that cannot be read) keeps one row, skipped with the reason.
    """
    if landmarks is not None:
        if detect or all_faces:
            raise ValueError("landmarks= aligns from the file without a detector: do not combine it with detect "
                             "or all_faces")
        faces = _match_landmarks(names, sources, landmarks)
        lm_name = os.path.basename(os.fspath(landmarks))
        return ([FaceSource(s, f, None if f is not None else f"no landmarks for this image in {lm_name}")
                 for s, f in zip(sources, faces)], list(names))
    if all_faces and not detect:
        raise ValueError("all_faces needs detect=True (--all-faces needs --detect)")
    if not detect:
        raise ValueError("face_sources needs detect=True or a landmarks file")
    if not all_faces:
        return [FaceSource(s) for s in sources], list(names)
    from concurrent.futures import ThreadPoolExecutor

    from .loader import DECODE_ERRORS, failure_reason

    def find(src):
        try:
            image = _image(src, max_pixels)
            return [f for f in detect_array(image) if f.score >= CONFIDENT_SCORE], None
        except DECODE_ERRORS as exc:
            return None, failure_reason(exc)

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1), thread_name_prefix="vitfiqa-detect") as ex:
        found = list(ex.map(find, sources))
    out, out_names = [], []
    for src, name, (faces, err) in zip(sources, names, found):
        if not faces:
            out.append(FaceSource(src, None, err or NO_FACE))
            out_names.append(name)
            continue
        for k, f in enumerate(faces):
            out.append(FaceSource(src, f))
            out_names.append(f"{name}#{k}")
    return out, out_names


__all__ = ["Face", "FaceSource", "FaceSkip", "detect_faces", "detect_array", "primary_face", "face_sources",
           "FACE_COLUMNS", "DETECT_SIZE", "MIN_SCORE", "CONFIDENT_SCORE", "MIN_EYE_DISTANCE", "NO_FACE",
           "TOO_SMALL"]
