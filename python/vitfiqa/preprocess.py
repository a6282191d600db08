"""Turning user images into the float NCHW batch a face ViT expects.

The standard face-recognition preprocessing (insightface / ViT-FIQA family) is: RGB, 112x112,
``(x / 255 - 0.5) / 0.5``. It is applied to uint8 images (NumPy HWC/NHWC arrays, PIL images, file paths);
float tensors are taken as already preprocessed unless ``preprocess=True``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

DEFAULT_IMAGE_SIZE = (112, 112)


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
    if isinstance(item, (bytes, bytearray, memoryview)):  # an encoded image (e.g. from an insightface .bin)
        import io

        try:
            with Image.open(io.BytesIO(item)) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image bytes: {exc}") from None
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
    """One image (path, encoded bytes, PIL image, uint8 array, or a :class:`vitfiqa.align.FaceCrop` which is
    aligned by its landmarks) -> uint8 HxWx3 RGB array resized (bilinear) to ``size``.

    Raises FileNotFoundError / ValueError (unreadable file) / TypeError (wrong dtype)."""
    from PIL import Image

    from .align import FaceCrop

    if isinstance(item, FaceCrop):
        return item.decode(tuple(size))
    arr = _hwc_uint8(item)
    if arr.shape[:2] != tuple(size):
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((size[1], size[0]), Image.BILINEAR))
    return arr


def normalize_uint8(batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NHWC batch (on any device) -> contiguous NCHW in [-1, 1]: ``(x / 255 - 0.5) / 0.5``.

    The arithmetic is float32 whatever ``dtype`` is (then cast), so CPU and GPU, float32 and the CPU-side
    path of :func:`preprocess_images` give the same bits."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32)
    x = (x / 255.0 - 0.5) / 0.5
    return x.to(dtype).contiguous()


def preprocess_images(images: Any, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """uint8 images (one or a sequence of HWC arrays, PIL images or paths; or an NHWC uint8 array) ->
    float32 [B,3,H,W] tensor resized (bilinear) to ``size`` and scaled to [-1, 1]."""
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
    return normalize_uint8(torch.from_numpy(out))


def as_batch(images: Any, preprocess: bool | str = "auto", size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """Normalise any supported image input to a float [B,3,H,W] tensor (not yet on the model's device)."""
    if isinstance(images, torch.Tensor):
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f"image tensors must be [B,3,H,W] or [3,H,W], got shape {tuple(images.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[1] != 3 and x.shape[-1] == 3:  # NHWC uint8
                return preprocess_images(x.cpu().numpy(), size)
            return preprocess_images(x.permute(0, 2, 3, 1).cpu().numpy(), size)
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
    return preprocess_images(images, size)
