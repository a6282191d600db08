"""Turning user images into the float NCHW batch a face ViT expects.

The standard face-recognition preprocessing (insightface / ViT-FIQA family) is: RGB, 112x112,
``(x / 255 - 0.5) / 0.5``. It is applied to uint8 images (NumPy HWC/NHWC arrays, PIL images, file paths);
float tensors are taken as already preprocessed unless ``preprocess=True``. A model's input contract (or the
caller) may ask for another size, BGR channel order (the decoded RGB channels are reversed) or another
per-channel mean and std (applied to ``x / 255``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

DEFAULT_IMAGE_SIZE = (112, 112)
DEFAULT_CHANNEL_ORDER = "rgb"
DEFAULT_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def check_channel_order(channel_order: str) -> str:
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return channel_order


def _load_pil(item: Any):
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    return None


def _hwc_uint8(item: Any) -> np.ndarray:
    pil = _load_pil(item)
    if pil is not None:
        return np.asarray(pil)
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        raise TypeError(f"images given as arrays must be uint8 HWC, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr[:, :, :3]


def load_uint8(item: Any, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """One image (path, PIL image or uint8 array) -> uint8 HxWx3 RGB array resized (bilinear) to ``size``.

    Raises FileNotFoundError / ValueError (unreadable file) / TypeError (wrong dtype)."""
    from PIL import Image

    arr = _hwc_uint8(item)
    if arr.shape[:2] != tuple(size):
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((size[1], size[0]), Image.BILINEAR))
    return arr


def normalize_uint8(batch: torch.Tensor, dtype: torch.dtype = torch.float32, channel_order: str = "rgb",
                    normalization: dict | None = None) -> torch.Tensor:
    """uint8 RGB NHWC batch (on any device) -> contiguous NCHW ``(x / 255 - mean) / std`` (default mean = std
    = 0.5: [-1, 1]), channels reversed first for a ``bgr`` model.

    The arithmetic is float32 whatever ``dtype`` is (then cast), so CPU and GPU, float32 and the CPU-side
    path of :func:`preprocess_images` give the same bits."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32)
    if check_channel_order(channel_order) == "bgr":
        x = x.flip(1)
    norm = normalization or DEFAULT_NORMALIZATION
    mean = torch.tensor(norm["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x / 255.0 - mean) / std
    return x.to(dtype).contiguous()


def preprocess_images(images: Any, size: tuple[int, int] = DEFAULT_IMAGE_SIZE, channel_order: str = "rgb",
                      normalization: dict | None = None) -> torch.Tensor:
    """uint8 RGB images (one or a sequence of HWC arrays, PIL images or paths; or an NHWC uint8 array) ->
    float32 [B,3,H,W] tensor resized (bilinear) to ``size``, normalised as :func:`normalize_uint8`."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        items = [images]
    if len(items) == 0:
        raise ValueError("no images given")
    out = np.empty((len(items), size[0], size[1], 3), dtype=np.uint8)
    for i, item in enumerate(items):
        out[i] = load_uint8(item, size)
    return normalize_uint8(torch.from_numpy(out), channel_order=channel_order, normalization=normalization)


def as_batch(images: Any, preprocess: bool | str = "auto", size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE,
             channel_order: str = "rgb", normalization: dict | None = None) -> torch.Tensor:
    """Normalise any supported image input to a float [B,3,H,W] tensor (not yet on the model's device).
    ``size`` may be a callable giving the size, asked only when uint8 images need resizing."""
    def prep(x):
        return preprocess_images(x, size() if callable(size) else size, channel_order, normalization)

    if isinstance(images, torch.Tensor):
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f"image tensors must be [B,3,H,W] or [3,H,W], got shape {tuple(images.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[1] != 3 and x.shape[-1] == 3:  # NHWC uint8
                return prep(x.cpu().numpy())
            return prep(x.permute(0, 2, 3, 1).cpu().numpy())
        if not x.is_floating_point():
            raise TypeError(f"image tensors must be floating point (or uint8 to be preprocessed), got {x.dtype}")
        if preprocess is True:
            raise ValueError("preprocess=True needs uint8 images; float tensors are taken as already preprocessed")
        return x
    if preprocess is False:
        raise TypeError("with preprocess=False, images must be a float [B,3,H,W] torch.Tensor")
    if isinstance(images, np.ndarray) and images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.ndim in (3, 4) and images.shape[-3] == 3:
            return as_batch(torch.from_numpy(np.ascontiguousarray(images)), preprocess=False, size=size)
        raise TypeError(f"NumPy images must be uint8 HWC/NHWC (or float CHW/NCHW preprocessed), got {images.dtype} {images.shape}")
    return prep(images)
