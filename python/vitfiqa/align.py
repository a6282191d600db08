"""Five-landmark face alignment to the standard 112x112 ArcFace template.

The insightface IJB evaluation (and CR-FIQA's IJB-C and Adience preparation) warp each loose crop with the
similarity transform (rotation, uniform scale, translation) that maps the five detected landmarks (left eye,
right eye, nose tip, left and right mouth corners; image x, y) onto a fixed template, least-squares fitted
(Umeyama 1991). The same works for users' own photos when they bring landmarks:

>>> from vitfiqa.align import align_face
>>> face = align_face(image_uint8_hwc, landmarks_5x2)          # uint8 112x112x3

:class:`FaceCrop` (an image source plus its landmarks) is accepted wherever the loaders accept an image path,
so aligned benchmarks go through the package's one image loader (:mod:`vitfiqa.pipeline`).

Warping uses Pillow's bilinear affine transform with a black border, set up to sample the same input positions as
OpenCV's ``warpAffine`` (used by the official scripts); OpenCV interpolates with fixed-point weights, so pixel
values can differ by a grey level or so.
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
    ``dst`` points in the least-squares sense (Umeyama's closed form, reflections excluded)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (n, 2) point sets with n >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("landmarks coincide: no transform can be fitted")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / var_s
    out = np.empty((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def template(size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The ArcFace template scaled to ``size`` (H, W); ``TEMPLATE_SIZE`` (112x112) gives the insightface
    points exactly."""
    h, w = size
    return ARCFACE_TEMPLATE * np.array([w / TEMPLATE_SIZE[1], h / TEMPLATE_SIZE[0]])


def warp_affine(image, m, size: tuple[int, int]) -> np.ndarray:
    """Warp a uint8 HxWx3 image by the 2x3 transform ``m`` (image coordinates -> output coordinates) into an
    output of ``size`` (H, W), bilinear, black border: the geometry of OpenCV's ``warpAffine``."""
    from PIL import Image

    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"the transform must be a finite 2x3 matrix, got shape {m.shape}")
    # Pillow maps output to input pixels: give it the inverse transform. Pillow samples at pixel centres
    # (input = A (x + 0.5) + t - 0.5); landmarks and OpenCV's warpAffine use pixel indices (input = A x + t),
    # so the translation is shifted by 0.5 - A (0.5, 0.5) to land on the same input positions as warpAffine.
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    inv[:, 2] += 0.5 - inv[:, :2] @ np.array([0.5, 0.5])
    out = Image.fromarray(np.ascontiguousarray(image)).transform(
        (size[1], size[0]), Image.AFFINE, tuple(inv.reshape(-1)), resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def align_face(image, landmarks, size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Warp ``image`` (uint8 HxWx3 array, PIL image, path or encoded bytes) so its five ``landmarks`` land on
    the ArcFace template; returns a uint8 ``size`` x 3 array (pixels outside the image are black).
    ``max_pixels``: the decoding limit for files (default: the package's, see :mod:`vitfiqa.preprocess`)."""
    from .preprocess import _hwc_uint8

    m = similarity_transform(_landmarks(landmarks), template(size))
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
