"""The embedded demo: synthetic faces (:mod:`.faces`), a small face-ViT recogniser and a ViT-FIQA quality
model trained on them (:mod:`.train`, ``vitfiqa train-demo``), and a controlled-degradation study of the four
quality methods on held-out identities (:mod:`.study`, ``vitfiqa demo``)."""
from dataclasses import dataclass
from pathlib import Path

from ..preprocess import DEFAULT_IMAGE_SIZE

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RECOGNIZER = ASSETS / "demo_recognizer.pt"     # plain face ViT (CosFace): ATTN-FIQA and ViTNT-FIQA read it
QUALITY_MODEL = ASSETS / "demo_vitfiqa.pt"     # ViT-FIQA quality-token model: ViT-FIQA and EX-FIQA read it


@dataclass
class DemoConfig:
    """What `vitfiqa train-demo` trains (every field is a --option of the command)."""

    image_size: int = DEFAULT_IMAGE_SIZE[0]  # square
    patch_size: int = 16
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_features: int = 128
    identities: int = 2000
    samples: int = 16
    batch_size: int = 128
    recognizer_epochs: int = 10
    recognizer_lr: float = 1e-3
    quality_epochs: int = 4
    quality_lr: float = 5e-4
    s: float = 32.0
    m: float = 0.3
    degrade_share: float = 0.5  # share of each batch degraded (blur, noise, low res, occlusion, JPEG, over/under)
    seed: int = 0
    # a TorchScript recogniser of this architecture to start the recogniser from (its weights; the class
    # centres start at each training identity's mean embedding), e.g. to refresh the embedded one; "" = scratch
    init_recognizer: str = ""

    def model_kwargs(self) -> dict:
        return dict(img_size=self.image_size, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
                    num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, num_features=self.num_features)


STAND_IN_WARNING = ("the embedded stand-in model was trained on synthetic faces: its scores of real photos are not "
                    "meaningful (its own verification AUC on real aligned faces is close to chance); bring your "
                    "model: vitfiqa.load(model) takes a TorchScript file, an nn.Module, a transformers or timm ViT, or "
                    "a preset with its official checkpoint, e.g. vitfiqa.load('cvlface_vit_b', checkpoint='model.pt') "
                    "(CLI: --model FILE, or --preset NAME --checkpoint FILE; docs/bring-your-own-model.md)")

_DIGESTS: set[str] = set()


def is_stand_in(model) -> bool:
    """Whether ``model`` (a :class:`vitfiqa.QualityModel`, or a sha256 digest) is one of the embedded stand-ins."""
    import hashlib

    if not _DIGESTS:
        _DIGESTS.update(hashlib.sha256(p.read_bytes()).hexdigest() for p in (RECOGNIZER, QUALITY_MODEL))
    return (model if isinstance(model, str) else getattr(model, "sha256", None)) in _DIGESTS


def write_sample_photos(folder, n: int = 8, size: int = DEFAULT_IMAGE_SIZE[0], seed: int = 0) -> list[str]:
    """Write ``n`` synthetic face photos (PNG, ``size`` x ``size``, held-out demo identities, a few renders
    each) into ``folder`` and return their paths, sorted: sample input for the examples in the docs and for
    trying the CLI; real face crops are used the same way."""
    import numpy as np
    from PIL import Image

    from .faces import HELD_OUT, render_faces

    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n) // 2 + seed * 1000
    samples = np.arange(n) % 2
    paths = []
    for i, face in enumerate(render_faces(ids, samples, size, HELD_OUT)):
        path = out / f"face{i:03d}.png"
        Image.fromarray(face).save(path)
        paths.append(str(path))
    return paths
