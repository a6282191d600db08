"""vitfiqa: face image quality from the recognition model's own Vision Transformer.

>>> import vitfiqa
>>> m = vitfiqa.load("model.pt")
>>> r = m.score(images, methods=("attn", "vitnt"), heatmaps=True)
>>> r.scores["attn"], r.heatmaps["attn"]
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from .api import METHODS, QualityModel, QualityResult, fuse_exits, load, render_heatmaps
from .config import ScoreConfig
from .detect import Face, detect_faces, primary_face
from .loader import preprocess_images
from .options import ModelOptions, RunOptions
from .preprocess import DEFAULT_IMAGE_SIZE

__all__ = ["load", "QualityModel", "QualityResult", "ScoreConfig", "ModelOptions", "RunOptions", "fuse_exits",
           "render_heatmaps", "preprocess_images", "METHODS", "DEFAULT_IMAGE_SIZE", "detect_faces", "primary_face", "Face"]
__version__ = "0.1.0"
