"""vitfiqa.viz draws heatmaps; normalising and resizing them is vitfiqa.render_heatmaps' job (one implementation)."""
import matplotlib
import numpy as np
import pytest
import torch

import vitfiqa
from vitfiqa.preprocess import normalize_uint8
from vitfiqa.viz import _to_uint8_image, heatmap_figure, overlay

matplotlib.use("Agg")


def _grids(n=3, seed=0):
    return torch.rand(n, 4, 5, generator=torch.Generator().manual_seed(seed)) * 7 - 2  # raw values, not in [0, 1]


def _images(n=3, size=(20, 25)):
    return [np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8) for i in range(n)]


def _drawn(fig):
    return [ax.images[0].get_array() for ax in fig.axes if ax.images]


@pytest.mark.parametrize("normalize", ["global", "image", "none"])
def test_figure_normalises_grids_as_render_heatmaps_then_resizes(normalize):
    grids, images = _grids(), _images()
    fig = heatmap_figure(images, grids, normalize=normalize)
    expected = vitfiqa.render_heatmaps(grids, images[0].shape[:2], normalize)
    assert [np.array_equal(d, overlay(im, e)) for d, im, e in zip(_drawn(fig), images, expected)] == [True] * 3


def test_figure_value_range_and_maps_as_given():
    grids, images = _grids(), _images()
    fig = heatmap_figure(images, grids, value_range=(-1.0, 3.0))
    expected = vitfiqa.render_heatmaps(grids, images[0].shape[:2], "global", value_range=(-1.0, 3.0))
    assert all(np.array_equal(d, overlay(im, e)) for d, im, e in zip(_drawn(fig), images, expected))
    maps = torch.rand(3, 20, 25)  # normalize=None: drawn as given
    fig = heatmap_figure(images, maps)
    assert all(np.array_equal(d, overlay(im, m)) for d, im, m in zip(_drawn(fig), images, maps))


def test_overlay_resizes_with_the_kernel():
    image, grid = _images(1)[0], torch.rand(4, 5)
    resized = vitfiqa.render_heatmaps(grid[None], (20, 25), "none")[0]
    assert np.array_equal(overlay(image, grid), overlay(image, resized))


def test_figure_and_overlay_reject_bad_input():
    # the messages are render_heatmaps' own: viz has no vocabulary or check of its own
    with pytest.raises(ValueError, match=r"unknown heatmap normalisation 'minmax' \(image, global, none\)"):
        heatmap_figure(_images(), _grids(), normalize="minmax")
    with pytest.raises(ValueError, match="value range is a fixed global range"):
        heatmap_figure(_images(), _grids(), normalize="image", value_range=(0, 1))
    with pytest.raises(ValueError, match="one heatmap per image"):
        heatmap_figure(_images(2), _grids(3))
    with pytest.raises(ValueError, match="one \\[h, w\\] map"):
        overlay(_images(1)[0], torch.rand(2, 4, 5))


def test_preprocessed_tensor_maps_back_to_the_image():
    image = _images(1)[0]
    x = normalize_uint8(torch.from_numpy(image)[None])[0]
    assert np.abs(_to_uint8_image(x).astype(int) - image).max() <= 1
    norm = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]}
    x = normalize_uint8(torch.from_numpy(image)[None], normalization=norm)[0]
    assert np.abs(_to_uint8_image(x, norm).astype(int) - image).max() <= 1
