"""Five-landmark face alignment to the standard 112x112 ArcFace template.

The insightface IJB evaluation (and CR-FIQA's IJB-C and Adience preparation) warp each loose crop with the
similarity transform (rotation, uniform scale, translation) that maps the five detected landmarks (left eye,
right eye, nose tip, left and right mouth corners; image x, y) onto a fixed template, least-squares fitted
(Umeyama 1991). The same works for users' own photos when they bring landmarks:

>>> from vitfiqa.align import align_face
>>> face = align_face(image_uint8_hwc, landmarks_5x2)          # uint8 112x112x3

:class:`FaceCrop` (an image source plus its landmarks) is accepted wherever the loaders accept an image path,
so aligned benchmarks go through the package's one image loader (:mod:`vitfiqa.pipeline`).

The matrix is fitted as insightface's ``face_align.estimate_norm`` fits it (:func:`estimate_norm`: float32
points, Umeyama's closed form, implemented here in NumPy) and the warp is OpenCV's own ``warpAffine`` with a
constant black border (``borderValue=0.0``), so an aligned crop has insightface's pixels exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .options import DEFAULT_MAX_PIXELS
from .preprocess import DEFAULT_IMAGE_SIZE

# The ArcFace template (insightface ``arcface_dst``): x, y of the five landmarks in a crop of TEMPLATE_SIZE,
# the frame its coordinates are given in (a fact of the template, not a choice of output size).
TEMPLATE_SIZE = (112, 112)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def _landmarks(points, name: str = "landmarks") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape == (10,):
        p = p.reshape(5, 2)
    if p.shape != (5, 2):
        raise ValueError(f"{name} must be five (x, y) points, shape (5, 2) or (10,); got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contain NaN or Inf")
    return p


def similarity_transform(src, dst) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, translation) mapping ``src`` points onto
    ``dst`` points in the least-squares sense (Umeyama's closed form, reflections excluded), as float64.

    The arithmetic runs in the precision of the points (float32 when both are float32, else float64), the
    convention of scikit-image's ``SimilarityTransform.estimate`` that insightface's ``estimate_norm`` uses:
    its template and the IJB landmarks it reads are float32, so :func:`estimate_norm` passes float32 points and
    gets insightface's matrix, and with it insightface's pixels."""
    src, dst = np.asarray(src), np.asarray(dst)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (n, 2) point sets with n >= 2, got {src.shape} and {dst.shape}")
    dt = np.result_type(src.dtype, dst.dtype, np.float32)
    src, dst = src.astype(dt, copy=False), dst.astype(dt, copy=False)
    n = len(src)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var_s = s.var(axis=0).sum()
    if not var_s > 1e-12:
        raise ValueError("landmarks coincide: no transform can be fitted")
    cov = d.T @ s / n                       # Umeyama (1991), eq. 38
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:              # eq. 39: no reflection
        sign[1] = -1.0
    rank = int(np.count_nonzero(sig > sig.max() * 2 * np.finfo(np.float64).eps))
    if rank == 0:
        raise ValueError("landmarks coincide: no transform can be fitted")
    if rank == 1:                           # eq. 43: a degenerate (collinear) fit
        flip = np.linalg.det(u) * np.linalg.det(vt) <= 0
        rot = u @ np.diag([1.0, -1.0 if flip else 1.0]) @ vt
    else:
        rot = u @ np.diag(sign) @ vt        # eq. 40
    scale = 1.0 / var_s * (sig @ sign)      # eq. 42
    out = np.empty((2, 3))
    out[:, 2] = mu_d - scale * (rot @ mu_s)  # eq. 41
    out[:, :2] = rot * scale
    return out


def template(size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The ArcFace template for an output of ``size`` (H, W), insightface's rule (``estimate_norm``): a square
    side that is a multiple of 112 scales the 112x112 template (224: x2); a multiple of 128 scales it by
    side/128 and shifts x by 8 x side/128 (the 128x128 crop centred on the 112 template); any other size
    scales x by W/112 and y by H/112. ``TEMPLATE_SIZE`` (112x112) gives the insightface points exactly."""
    h, w = (int(v) for v in size)
    if h == w and h % 112 == 0:
        return ARCFACE_TEMPLATE * (h / 112.0)
    if h == w and h % 128 == 0:
        return ARCFACE_TEMPLATE * (h / 128.0) + np.array([8.0 * h / 128.0, 0.0])
    return ARCFACE_TEMPLATE * np.array([w / TEMPLATE_SIZE[1], h / TEMPLATE_SIZE[0]])


def estimate_norm(landmarks, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The 2x3 matrix that aligns a face with five ``landmarks`` (left eye, right eye, nose tip, left and right
    mouth corners as image x, y) to the ArcFace template of ``size`` (H, W): insightface's ``estimate_norm``
    convention, points held in float32 (its template's precision, and that of the landmarks its IJB
    evaluation reads), the similarity fitted in that precision (:func:`similarity_transform`)."""
    lm = _landmarks(landmarks).astype(np.float32)
    h, w = (int(v) for v in size)
    if h == w and h % 112 == 0:
        dst = ARCFACE_TEMPLATE.astype(np.float32) * np.float32(h / 112.0)
    elif h == w and h % 128 == 0:
        dst = ARCFACE_TEMPLATE.astype(np.float32) * np.float32(h / 128.0)
        dst[:, 0] += np.float32(8.0 * h / 128.0)
    else:
        dst = template((h, w)).astype(np.float32)
    return similarity_transform(lm, dst)


def warp_affine(image, m, size: tuple[int, int]) -> np.ndarray:
    """Warp a uint8 HxWx3 image by the 2x3 transform ``m`` (image coordinates -> output coordinates) into an
    output of ``size`` (H, W): OpenCV's ``warpAffine`` itself (bilinear, constant black border,
    ``borderValue=0.0``), as insightface's ``norm_crop`` and IJB evaluation call it."""
    import cv2

    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"the transform must be a finite 2x3 matrix, got shape {m.shape}")
    h, w = (int(v) for v in size)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), borderValue=0.0)


def align_face(image, landmarks, size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Warp ``image`` (uint8 HxWx3 array, PIL image, path or encoded bytes) so its five ``landmarks`` land on
    the ArcFace template; returns a uint8 ``size`` x 3 array (pixels outside the image are black).
    ``max_pixels``: the decoding limit for files (default: the package's, see :mod:`vitfiqa.preprocess`).
    The same pixels as insightface's ``norm_crop`` (:func:`estimate_norm`, then :func:`warp_affine`)."""
    from .preprocess import _hwc_uint8

    m = estimate_norm(landmarks, size)
    return warp_affine(_hwc_uint8(image, max_pixels), m, size)


@dataclass(frozen=True)
class FaceCrop:
    """An image source (path or encoded bytes) with its five landmarks; decoding it yields the aligned face."""

    source: Any
    landmarks: tuple

    def __post_init__(self):
        object.__setattr__(self, "landmarks", tuple(map(float, _landmarks(self.landmarks).reshape(-1))))

    def decode(self, size: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
        return align_face(self.source, np.asarray(self.landmarks).reshape(5, 2), size, max_pixels)

    def __str__(self) -> str:
        return os.fspath(self.source) if isinstance(self.source, (str, os.PathLike)) else "<bytes>"
