"""The embedded demo: synthetic faces (:mod:`.faces`), a small face-ViT recogniser and a ViT-FIQA quality
model trained on them (:mod:`.train`, ``vitfiqa train-demo``), and a controlled-degradation study of the four
quality methods on held-out identities (:mod:`.study`, ``vitfiqa demo``)."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RECOGNIZER = ASSETS / "demo_recognizer.pt"     # plain face ViT (CosFace): ATTN-FIQA and ViTNT-FIQA read it
QUALITY_MODEL = ASSETS / "demo_vitfiqa.pt"     # ViT-FIQA quality-token model: ViT-FIQA and EX-FIQA read it
