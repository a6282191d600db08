"""Heatmap overlays for papers: JET colour map, alpha 0.4.

Normalising and resizing heatmaps is not done here: it goes through :func:`vitfiqa.render_heatmaps` (the C++
kernel behind ``score(..., heatmaps=True)``), the one implementation of the official ATTN-FIQA plot
convention (min-max on the patch grid, then bilinear resize), with its vocabulary (``image``, ``global``,
``none``, or a fixed ``value_range``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .api import render_heatmaps
from .preprocess import denormalize_to_uint8


def _to_uint8_image(image, normalization: dict | None = None) -> np.ndarray:
    """HxWx3 uint8 of an image: uint8/float arrays as they are (clipped to 0..255); a preprocessed float CHW
    tensor is mapped back through ``normalization`` (default: the standard mean = std = 0.5)."""
    import torch

    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 3 and t.shape[0] == 3:  # preprocessed CHW: (x/255 - mean) / std
            t = denormalize_to_uint8(t[None], normalization=normalization)[0]
        image = t.numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def _as_maps(heatmaps) -> np.ndarray:
    return np.asarray(heatmaps.detach().cpu() if hasattr(heatmaps, "detach") else heatmaps, dtype=np.float32)


def overlay(image, heatmap, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 image with a [h,w] heatmap in [0,1] blended on top. A heatmap of another size than the
    image (e.g. a patch grid) is resized by :func:`vitfiqa.render_heatmaps` (bilinear, as the official plots)."""
    import matplotlib

    img = _to_uint8_image(image)
    hm = _as_maps(heatmap)
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be in [0, 1]")
    if hm.ndim != 2:
        raise ValueError(f"a heatmap is one [h, w] map, got shape {hm.shape}")
    if hm.shape != img.shape[:2]:
        hm = render_heatmaps(hm[None], img.shape[:2], "none")[0].numpy()
    colours = matplotlib.colormaps[cmap](np.clip(hm, 0, 1))[..., :3] * 255
    return (img * (1 - alpha) + colours * alpha).astype(np.uint8)


def heatmap_figure(images: Sequence, heatmaps, titles: Sequence[str] | None = None, path: str | None = None,
                   normalize: str | None = None, alpha: float = 0.4, ncols: int | None = None,
                   value_range: tuple[float, float] | None = None, title: str | None = None,
                   colorbar: str | None = None, footnote: str | None = None, dpi: int = 110, cmap: str = "jet"):
    """A grid of overlays (one per image).

    ``heatmaps``: [B,h,w] maps, e.g. ``result.heatmaps[m]`` (already normalised by ``score``) or the raw
    patch grids ``result.heatmap_grids[m]``. ``normalize=None`` draws them as given; ``"global"`` (one min and
    max for the whole figure: the official default), ``"image"`` or ``"none"`` normalise them first with
    :func:`vitfiqa.render_heatmaps`, as does ``value_range=(lo, hi)`` (with ``"global"`` or None). Maps are
    resized to each image after normalising, as the official plots do. ``title`` heads the figure (e.g. the
    method), ``colorbar`` labels a colour bar of the map's scale (0..1), ``footnote`` is printed under the grid
    (e.g. a legend of the image titles). Saved to ``path`` (PNG/PDF, ``dpi``) when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    hms = _as_maps(heatmaps)
    n = len(images)
    if n == 0 or len(hms) != n:
        raise ValueError("one heatmap per image is needed")
    if normalize is not None or value_range is not None:
        hms = render_heatmaps(hms, None, normalize or "global", value_range).numpy()
    ncols = ncols or min(n, 6)
    nrows = (n + ncols - 1) // ncols
    extra_h = (0.35 if title else 0) + (0.45 * max(1, footnote.count("\n") + 1) if footnote else 0)
    title_lines = max((str(t).count("\n") + 1 for t in titles), default=1) if titles is not None else 1
    row_h = 1.9 + 0.14 * (title_lines - 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols + (0.9 if colorbar else 0), row_h * nrows + extra_h),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(overlay(images[i], hms[i], alpha=alpha, cmap=cmap))
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=6.5, va="bottom", ha="left", wrap=True)
    bottom = (0.45 * max(1, footnote.count("\n") + 1) / fig.get_figheight()) if footnote else 0
    top = 1 - (0.35 / fig.get_figheight() if title else 0)
    right = 1 - (0.9 / fig.get_figwidth() if colorbar else 0)
    fig.tight_layout(rect=(0, bottom, right, top))
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cax = fig.add_axes((right + 0.15 / fig.get_figwidth(), bottom + 0.1 * (top - bottom),
                            0.15 / fig.get_figwidth(), 0.8 * (top - bottom)))
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax)
        bar.set_label(colorbar, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
