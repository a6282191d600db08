"""Comparison scores and pair lists."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..embeddings import flip_concat, l2_normalize  # noqa: F401  (their home; part of vitfiqa.eval's surface)


@dataclass
class Pairs:
    """Comparison pairs as indices into an image (or template) list; ``genuine`` marks mated pairs."""

    a: np.ndarray
    b: np.ndarray
    genuine: np.ndarray

    def __post_init__(self):
        self.a = np.asarray(self.a, dtype=np.int64)
        self.b = np.asarray(self.b, dtype=np.int64)
        self.genuine = np.asarray(self.genuine, dtype=bool)
        if not (self.a.shape == self.b.shape == self.genuine.shape) or self.a.ndim != 1:
            raise ValueError("pair arrays a, b and genuine must be 1-D and of equal length")

    def __len__(self) -> int:
        return len(self.a)

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.sum())

    @property
    def n_impostor(self) -> int:
        return int((~self.genuine).sum())

    def check(self, n_items: int) -> "Pairs":
        if len(self) == 0:
            raise ValueError("no comparison pairs")
        hi = max(self.a.max(), self.b.max())
        if self.a.min() < 0 or self.b.min() < 0 or hi >= n_items:
            raise ValueError(f"pair indices must lie in [0, {n_items}), found {hi}")
        return self

    @staticmethod
    def consecutive(issame) -> "Pairs":
        """insightface .bin layout: images 2i and 2i+1 form pair i."""
        issame = np.asarray(issame, dtype=bool)
        i = np.arange(len(issame))
        return Pairs(2 * i, 2 * i + 1, issame)

    @staticmethod
    def all_pairs(identities) -> "Pairs":
        """Every unordered pair i < j of a labelled set (Adience protocol); genuine if same identity."""
        ids = np.asarray(identities)
        n = len(ids)
        if n * (n - 1) // 2 > 200_000_000:
            raise ValueError(f"{n} images give {n * (n - 1) // 2} pairs; split the set first")
        a, b = np.triu_indices(n, k=1)
        return Pairs(a, b, ids[a] == ids[b])


def comparison_scores(embeddings, pairs: Pairs, metric: str = "cosine", chunk: int | None = None) -> np.ndarray:
    """Similarity of each pair: ``cosine`` of L2-normalised embeddings, or ``arccos`` = 1 - arccos(cos)/pi
    (the CR-FIQA code's angular distance turned into a similarity). float32, computed in bounded memory.

    Sparse pair lists (LFW: 6,000 pairs of 12,000 images) gather the two rows of each pair, ``chunk`` pairs at a
    time (default: two gathered blocks of about 32 MB whatever the width). Dense ones (IJB-C: 15.6 M pairs of
    23 k templates; Adience: all pairs) multiply blocks of rows by the whole matrix and pick the pairs: far
    fewer random memory reads. Both give the float32 dot product (up to rounding order)."""
    emb = l2_normalize(embeddings)
    pairs.check(len(emb))
    n, d = emb.shape
    if chunk is None:
        chunk = max(1024, (32 << 20) // max(1, d * emb.itemsize))
    out = np.empty(len(pairs), dtype=np.float32)
    if n * n <= 64 * len(pairs):  # dense: row blocks x all rows, ~32 MB per block of similarities
        block = max(1, min(n, (32 << 20) // (4 * n)))
        order = np.argsort(pairs.a, kind="stable")
        bounds = np.searchsorted(pairs.a[order], np.arange(0, n + block, block))
        emb_t = np.ascontiguousarray(emb.T)
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            sims = emb[i * block:(i + 1) * block] @ emb_t
            sel = order[lo:hi]
            out[sel] = sims[pairs.a[sel] - i * block, pairs.b[sel]]
    else:
        for s in range(0, len(pairs), chunk):
            a, b = emb[pairs.a[s:s + chunk]], emb[pairs.b[s:s + chunk]]
            out[s:s + chunk] = np.einsum("ij,ij->i", a, b)
    np.clip(out, -1.0, 1.0, out=out)
    if metric == "cosine":
        return out
    if metric == "arccos":
        return (1.0 - np.arccos(out) / np.pi).astype(np.float32)
    raise ValueError(f"unknown metric {metric!r} (cosine, arccos)")


def masked_comparison_scores(features, pairs: Pairs, valid: np.ndarray | None = None,
                             metric: str = "cosine") -> np.ndarray:
    """:func:`comparison_scores` of feature rows of which some are missing: NaN for every pair with a side that
    is not usable (a row with NaN/Inf or all zeros, or ``valid`` False); those rows never enter the arithmetic
    (a constant row stands in for them), so the other pairs' scores do not depend on them."""
    feats = np.asarray(features)
    ok = np.isfinite(feats).all(axis=1) & (np.abs(feats).sum(axis=1) > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    sims = comparison_scores(np.where(ok[:, None], feats, 1.0), pairs, metric=metric)
    sims[~(ok[pairs.a] & ok[pairs.b])] = np.nan
    return sims
