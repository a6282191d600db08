"""Heatmap overlays for papers: JET colour map, alpha 0.4, per-image or figure-wide (global) normalisation."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _to_uint8_image(image) -> np.ndarray:
    import torch

    from .preprocess import denormalize_to_uint8

    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 3 and t.shape[0] == 3:  # preprocessed CHW (the default normalisation: [-1, 1])
            t = denormalize_to_uint8(t[None])[0]
        image = t.numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def normalize_heatmaps(heatmaps, mode: str = "image") -> np.ndarray:
    """Min-max normalise a stack of already resized maps [B,H,W]: per ``image`` or ``global`` over the stack.

    This is NOT the official ATTN-FIQA convention (which normalises the patch grid before resizing, so its
    maps differ by up to a few hundredths): for that, ask ``QualityModel.score`` for
    ``heatmap_normalize="image"|"global"`` or use :func:`vitfiqa.render_heatmaps` on ``heatmap_grids``."""
    h = np.asarray(heatmaps.cpu() if hasattr(heatmaps, "cpu") else heatmaps, dtype=np.float64)
    if mode == "image":
        lo = h.reshape(len(h), -1).min(1)[:, None, None]
        hi = h.reshape(len(h), -1).max(1)[:, None, None]
    elif mode == "global":
        lo, hi = h.min(), h.max()
    else:
        raise ValueError("mode must be 'image' or 'global'")
    return (h - lo) / np.maximum(hi - lo, 1e-12)


def overlay(image, heatmap, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 image with a [H,W] heatmap in [0,1] blended on top (resized to the image if needed)."""
    import matplotlib
    from PIL import Image

    img = _to_uint8_image(image)
    hm = np.asarray(heatmap, dtype=np.float32)
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be in [0, 1]")
    if hm.shape != img.shape[:2]:
        hm = np.asarray(Image.fromarray(hm).resize((img.shape[1], img.shape[0]), Image.BILINEAR))
    colours = matplotlib.colormaps[cmap](np.clip(hm, 0, 1))[..., :3] * 255
    return (img * (1 - alpha) + colours * alpha).astype(np.uint8)


def heatmap_figure(images: Sequence, heatmaps, titles: Sequence[str] | None = None, path: str | None = None,
                   normalize: str | None = None, alpha: float = 0.4, ncols: int | None = None):
    """A grid of overlays (one per image). ``normalize=None`` draws the maps as given (as ``score`` normalised
    them: ``heatmap_normalize="global"`` shares one scale across the figure, the official default);
    ``"image"`` / ``"global"`` re-normalise the resized maps (see :func:`normalize_heatmaps`).
    Saved to ``path`` (PNG/PDF) when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    hms = np.asarray(heatmaps.cpu() if hasattr(heatmaps, "cpu") else heatmaps, dtype=np.float64) \
        if normalize is None else normalize_heatmaps(heatmaps, normalize)
    n = len(images)
    if n == 0 or len(hms) != n:
        raise ValueError("one heatmap per image is needed")
    ncols = ncols or min(n, 6)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 1.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(overlay(images[i], hms[i], alpha=alpha))
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
