"""ViT-FIQA training: L = L_FR (margin softmax, CosFace s=64 m=0.4) + alpha * SmoothL1(beta=0.5)(q, CR),
CR = CCS / (NNCCS + 1 + 1e-9) with CCS the cosine to the sample's own class centre (before the margin) and
NNCCS the largest cosine to any other class centre; the target is detached. AdamW lr 1e-3 wd 0.05.

Works on any dataset of (image tensor, identity): :class:`InMemoryDataset`, :class:`FolderDataset`
(one folder per identity) or your own ``torch.utils.data.Dataset``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MarginSoftmax(nn.Module):
    """CosFace head: s * (cos(theta) - m * onehot); its weight rows are the class centres."""

    def __init__(self, features: int, classes: int, s: float = 64.0, m: float = 0.4):
        super().__init__()
        if classes < 2:
            raise ValueError("margin softmax needs at least two identities")
        self.weight = nn.Parameter(torch.randn(classes, features) * 0.01)
        self.s, self.m = s, m

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(emb) @ F.normalize(self.weight).t()

    def forward(self, emb, labels):
        cos = self.cosine(emb)
        return F.cross_entropy(self.s * (cos - self.m * F.one_hot(labels, cos.shape[1])), labels), cos


def certainty_ratio(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CR-FIQA target from the (pre-margin) class-centre cosines [B, classes]."""
    idx = torch.arange(len(labels), device=cos.device)
    ccs = cos[idx, labels]
    others = cos.clone()
    others[idx, labels] = -2.0
    nnccs = others.max(1).values
    return ccs / (nnccs + 1 + 1e-9)


def vitfiqa_loss(emb, quality, labels, head: MarginSoftmax, alpha: float = 10.0):
    fr, cos = head(emb, labels)
    target = certainty_ratio(cos, labels).detach()
    q = F.smooth_l1_loss(quality.reshape(-1), target, beta=0.5)
    return fr + alpha * q, fr, q


class InMemoryDataset(torch.utils.data.Dataset):
    """Preprocessed float images [N,3,H,W] with integer identities [N]."""

    def __init__(self, images: torch.Tensor, identities):
        ids = torch.as_tensor(np.asarray(identities), dtype=torch.long)
        if images.dim() != 4 or len(images) != len(ids) or len(ids) == 0:
            raise ValueError("need a non-empty [N,3,H,W] image tensor and one identity per image")
        self.images, self.identities = images, ids

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.identities[i]


class FolderDataset(torch.utils.data.Dataset):
    """``root/<identity>/<image>`` (any PIL-readable image), preprocessed to ``size`` like the face models."""

    EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

    def __init__(self, root: str | os.PathLike, size=(112, 112)):
        root = Path(root)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        self.items = [(p, c) for c, name in enumerate(classes) for p in sorted((root / name).iterdir())
                      if p.suffix.lower() in self.EXTS]
        if not self.items:
            raise ValueError(f"no identity folders with images under {root}")
        self.size, self.classes = tuple(size), classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from .preprocess import preprocess_images

        path, c = self.items[i]
        return preprocess_images([str(path)], self.size)[0], c


def _num_classes(dataset) -> int:
    if isinstance(dataset, InMemoryDataset):
        return int(dataset.identities.max()) + 1
    if isinstance(dataset, FolderDataset):
        return len(dataset.classes)
    return int(max(int(dataset[i][1]) for i in range(len(dataset)))) + 1


def train_vitfiqa(model: nn.Module, dataset, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
                  weight_decay: float = 0.05, alpha: float = 10.0, s: float = 64.0, m: float = 0.4,
                  device: str = "cpu", checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
                  progress: bool = True, seed: int = 0, augment: Callable | None = None) -> dict:
    """Train a ViT-FIQA model (forward -> (embedding, quality)). Returns the loss history per step.

    With ``checkpoint_dir`` a checkpoint is written after every epoch and, with ``resume``, training starts
    from the latest one (model, margin head, optimiser, epoch)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model.to(device).eval()  # BatchNorm cannot see a batch of one in training mode
    with torch.no_grad():
        feats = model(dataset[0][0][None].to(device))[0].shape[1]
    model.train()
    head = MarginSoftmax(feats, _num_classes(dataset), s=s, m=m).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=lr, weight_decay=weight_decay)
    history = {"loss": [], "fr": [], "quality": []}
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt_dir and resume and (ckpt_dir / "last.pt").exists():
        # weights_only: a checkpoint folder may come from elsewhere; tensors, numbers and lists are all it holds
        state = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    for epoch in range(start_epoch, epochs):
        bar = tqdm(loader, disable=not progress, desc=f"epoch {epoch + 1}/{epochs}")
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x)
            emb, q = model(x)
            loss, fr, ql = vitfiqa_loss(emb, q, y, head, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("fr", fr), ("quality", ql)):
                history[k].append(float(v.detach()))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
        if ckpt_dir:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch + 1, "history": history}, ckpt_dir / "last.pt")
    model.eval()
    history["head"] = head
    return history
