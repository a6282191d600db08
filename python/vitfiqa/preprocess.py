"""Turning user images into the float NCHW batch a face ViT expects.

The standard face-recognition preprocessing (insightface / ViT-FIQA family) is: RGB, 112x112,
``(x / 255 - 0.5) / 0.5``. It is applied to uint8 images (NumPy HWC/NHWC arrays, PIL images, file paths);
float tensors are taken as already preprocessed unless ``preprocess=True``. A model's input contract (or the
caller) may ask for another size, BGR channel order (the decoded RGB channels are reversed) or another
per-channel mean and std (applied to ``x / 255``).
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .options import DEFAULT_MAX_PIXELS  # its home; re-exported here for callers of this module

DEFAULT_IMAGE_SIZE = (112, 112)
CHANNEL_ORDERS = ("rgb", "bgr")  # the one list; the CLI's choices and every check read it
DEFAULT_CHANNEL_ORDER = "rgb"
DEFAULT_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def check_channel_order(channel_order: str) -> str:
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be {' or '.join(map(repr, CHANNEL_ORDERS))}, got {channel_order!r}")
    return channel_order


_PIL_LIMIT_LOCK = threading.Lock()
_PIL_LIMIT_USERS = 0
_PIL_LIMIT_SAVED: Any = None


@contextmanager
def _pillow_limit_lifted():
    """Set ``PIL.Image.MAX_IMAGE_PIXELS = None`` while at least one vitfiqa decode runs (decoding threads
    overlap: the first to enter saves the value, the last to leave restores it). vitfiqa's own ``max_pixels``
    is checked from the header right after ``Image.open``, before any pixel is decoded."""
    from PIL import Image

    global _PIL_LIMIT_USERS, _PIL_LIMIT_SAVED
    with _PIL_LIMIT_LOCK:
        if _PIL_LIMIT_USERS == 0:
            _PIL_LIMIT_SAVED = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _PIL_LIMIT_USERS += 1
    try:
        yield
    finally:
        with _PIL_LIMIT_LOCK:
            _PIL_LIMIT_USERS -= 1
            if _PIL_LIMIT_USERS == 0:
                Image.MAX_IMAGE_PIXELS = _PIL_LIMIT_SAVED


def _scale_to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a = (a.astype(np.float64) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def high_depth_to_uint8(im) -> np.ndarray | None:
    """8-bit grey array of a high-bit-depth single-channel image, scaled by its true range instead of
    clipped (``convert("RGB")`` would clip every value above 255 to white); None for other modes.

    - ``I;16*`` (16-bit grey, e.g. a 16-bit PNG or TIFF): the format's range 0..65535.
    - ``I`` (32-bit integers): 0..65535 when every value fits (16-bit data, as some decoders deliver it),
      else the image's own min..max.
    - ``F`` (32-bit float): 0..1 when every value is in it, else the image's own min..max."""
    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return None
    a = np.asarray(im)
    if a.size == 0:
        raise ValueError("image has no pixels")
    if im.mode == "F" and not np.isfinite(a).all():
        raise ValueError("image has NaN or infinite pixel values")
    lo, hi = float(a.min()), float(a.max())
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        return _scale_to_uint8(a, 0.0, 65535.0)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        return _scale_to_uint8(a, 0.0, 1.0)
    return _scale_to_uint8(a, lo, hi)


def pil_to_rgb(im) -> np.ndarray:
    """uint8 HxWx3 RGB array of a PIL image of any mode: 8-bit modes through ``convert("RGB")`` (alpha
    dropped, palette and CMYK resolved), high-bit-depth ones scaled (:func:`high_depth_to_uint8`)."""
    grey = high_depth_to_uint8(im)
    if grey is not None:
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_image(src: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None,
               exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file (path, or a binary file object / bytes) -> uint8 HxWx3 RGB.
    exif_orientation: turn the image upright by its EXIF orientation tag (cameras store portrait photos
    sideways with such a tag; ``cv2.imread`` applies it too). Used by the face stage on raw photos.

    Every way a file can fail — missing, not an image, truncated, above ``max_pixels``, a mode with no RGB
    conversion, a decoder error of any kind — raises FileNotFoundError or ValueError with the reason, so a
    caller can skip the image and go on."""
    from PIL import Image

    label = name or (str(src) if isinstance(src, (str, os.PathLike)) else
                     "(encoded bytes)" if isinstance(src, (bytes, bytearray, memoryview)) else "(file object)")
    if isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
        raise FileNotFoundError(f"image file not found: {src}")
    if isinstance(src, (bytes, bytearray, memoryview)):
        import io

        src = io.BytesIO(src)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError("max_pixels must be positive (or None for no limit)")
    try:
        with _pillow_limit_lifted(), Image.open(src) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise _TooLarge(f"{w}x{h} = {w * h / 1e6:.1f} MP is above the limit of {max_pixels / 1e6:.1f} MP "
                                "(max_pixels / --max-pixels)")
            if exif_orientation:
                from PIL import ImageOps

                return pil_to_rgb(ImageOps.exif_transpose(im))
            return pil_to_rgb(im)
    except (_TooLarge, Image.DecompressionBombError) as exc:  # Pillow's own limit is checked inside open()
        raise ValueError(f"image {label} not decoded: {exc}") from None
    except Exception as exc:  # untrusted bytes: Pillow's decoders raise many types (OSError, SyntaxError, ...)
        # Pillow names a file object by its repr (an address): left out, so a reason is the same on every run
        msg = str(exc).replace(f" {src!r}", "").replace("\n", " ") or type(exc).__name__
        raise ValueError(f"cannot read image {label}: {msg}") from None


class _TooLarge(Exception):
    pass


def _hwc_uint8(item: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    from PIL import Image

    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):  # a file or its encoded bytes
        return read_image(item, max_pixels)
    if isinstance(item, Image.Image):
        return pil_to_rgb(item)
    # a uint8 array: HxW, HxWx1, HxWx3 or HxWx4
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


def resize_uint8(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 HxWx3 array resized (bilinear, Pillow) to ``size`` (H, W); unchanged when it has that size or
    ``size`` is None."""
    from PIL import Image

    if size is not None and arr.shape[:2] != tuple(size):
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((size[1], size[0]), Image.BILINEAR))
    return arr


def normalize_uint8(batch: torch.Tensor, dtype: torch.dtype = torch.float32, channel_order: str = DEFAULT_CHANNEL_ORDER,
                    normalization: dict | None = None) -> torch.Tensor:
    """uint8 RGB NHWC batch (on any device) -> contiguous NCHW ``(x / 255 - mean) / std`` (default mean = std
    = 0.5: [-1, 1]), channels reversed first for a ``bgr`` model.

    The arithmetic is float32 whatever ``dtype`` is (then cast), so CPU and GPU, float32 and the CPU-side
    path of :func:`preprocess_images` give the same bits."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32)
    if check_channel_order(channel_order) == "bgr":
        x = x.flip(1)
    mean, std = _mean_std(normalization, x.device)
    x = (x / 255.0 - mean) / std
    return x.to(dtype).contiguous()


def denormalize_to_uint8(x: torch.Tensor, channel_order: str = DEFAULT_CHANNEL_ORDER,
                         normalization: dict | None = None) -> torch.Tensor:
    """The inverse of :func:`normalize_uint8` for display: float NCHW model input -> uint8 RGB NHWC on the CPU
    (``(x * std + mean)`` clipped to [0, 1], times 255, truncated)."""
    x = x.detach().to(torch.float32)
    mean, std = _mean_std(normalization, x.device)
    x = ((x * std + mean).clamp(0, 1) * 255).to(torch.uint8)
    if check_channel_order(channel_order) == "bgr":
        x = x.flip(1)
    return x.permute(0, 2, 3, 1).cpu()


def _mean_std(normalization: dict | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a normalisation ({"mean": [3], "std": [3]}; default 0.5, 0.5) as [1,3,1,1]."""
    norm = normalization or DEFAULT_NORMALIZATION
    return tuple(torch.tensor(norm[k], dtype=torch.float32, device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
