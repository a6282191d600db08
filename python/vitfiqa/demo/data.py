"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (idx files), as RGB 32x32 uint8 images."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DATA_DIR = Path(os.environ.get("VITFIQA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
INSTALL_HINT = "apt-get install dataset-fashion-mnist (or set VITFIQA_FASHION_MNIST to a folder of its idx .gz files)"


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images [N,32,32,3] uint8, labels [N]) for ``train`` or ``t10k``/``test``."""
    prefix = "train" if split == "train" else "t10k"
    img, lab = DATA_DIR / f"{prefix}-images-idx3-ubyte.gz", DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.is_file() or not lab.is_file():
        raise FileNotFoundError(f"Fashion-MNIST not found in {DATA_DIR}: {INSTALL_HINT}")
    x = _read_idx(img)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))  # 28 -> 32 so that 4x4 patches tile the image
    return np.repeat(x[..., None], 3, axis=3), _read_idx(lab).astype(np.int64)


def to_tensor(images: np.ndarray):
    """uint8 NHWC -> float NCHW with the face-recognition normalisation (x/255 - 0.5) / 0.5."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (t / 255.0 - 0.5) / 0.5
