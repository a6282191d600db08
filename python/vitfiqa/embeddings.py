"""Embedding arithmetic shared by the recogniser (its flip modes) and the evaluation (comparison scores): plain
NumPy, importing nothing of vitfiqa, so neither has to import the other's package."""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    if (n == 0).any():
        raise ValueError("zero-norm embedding cannot be normalised")
    return x / n


def flip_concat(embeddings, flipped_embeddings) -> np.ndarray:
    """CR-FIQA evaluation: each image's embedding and that of its horizontal flip, each L2-normalised, concatenated
    as [original, flipped] (2 x D, e.g. 1024-d) and not normalised again."""
    e, f = np.asarray(embeddings), np.asarray(flipped_embeddings)
    if e.shape != f.shape or e.ndim != 2:
        raise ValueError(f"embeddings must be two [N, D] arrays of equal shape, got {e.shape} and {f.shape}")
    return np.concatenate([l2_normalize(e), l2_normalize(f)], axis=1)


__all__ = ["l2_normalize", "flip_concat"]
