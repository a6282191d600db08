"""ViT-FIQA training: L = L_FR (margin softmax, CosFace s=64 m=0.4) + alpha * SmoothL1(beta=0.5)(q, CR),
CR = CCS / (NNCCS + 1 + 1e-9) with CCS the cosine to the sample's own class centre (before the margin) and
NNCCS the largest cosine to any other class centre; the target is detached. AdamW lr 1e-3 wd 0.05.

Works on any dataset of (image tensor, identity): :class:`InMemoryDataset`, :class:`FolderDataset`
(one folder per identity) or your own ``torch.utils.data.Dataset``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loader import is_image_file
from .options import TrainOptions, check_batch_size, no_unknown, take_deprecated
from .preprocess import DEFAULT_IMAGE_SIZE


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


@dataclass
class TrainingResult:
    """What :func:`train_vitfiqa` and :func:`train_recognizer` return: the trained margin head and the run's
    history (every step of every session, resumed ones included)."""

    head: MarginSoftmax  # the CosFace head; its weight rows are the class centres
    loss: list[float] = field(default_factory=list)  # total loss per step
    fr: list[float] = field(default_factory=list)  # face-recognition (margin softmax) loss per step
    quality: list[float] = field(default_factory=list)  # quality-regression loss per step (0 for a recogniser)
    epochs: list[dict] = field(default_factory=list)  # per epoch: {"epoch": n, **after_epoch(...)}


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
    """Images with integer identities [N]: preprocessed float [N,3,H,W], or uint8 [N,H,W,3] RGB that is scaled
    to [-1, 1] per item (four times less memory for a large rendered set)."""

    def __init__(self, images: torch.Tensor, identities):
        ids = torch.as_tensor(np.asarray(identities), dtype=torch.long)
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        ok = images.dim() == 4 and (images.is_floating_point() and images.shape[1] == 3
                                    or images.dtype == torch.uint8 and images.shape[3] == 3)
        if not ok or len(images) != len(ids) or len(ids) == 0:
            raise ValueError("need a non-empty float [N,3,H,W] or uint8 [N,H,W,3] image tensor and one identity "
                             "per image")
        self.images, self.identities = images, ids

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if x.dtype == torch.uint8:
            from .preprocess import normalize_uint8

            x = normalize_uint8(x[None])[0]
        return x, self.identities[i]

    def __getitems__(self, indices):
        """A whole batch at once (the DataLoader calls this; one normalisation per batch, not per image)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        if x.dtype == torch.uint8:
            from .preprocess import normalize_uint8

            x = normalize_uint8(x)
        return x, self.identities[idx]


class FolderDataset(torch.utils.data.Dataset):
    """``root/<identity>/<image>`` (files named as images: :data:`vitfiqa.loader.IMAGE_EXTENSIONS`), preprocessed
    to ``size`` like the face models."""

    def __init__(self, root: str | os.PathLike, size=DEFAULT_IMAGE_SIZE):
        root = Path(root)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        self.items = [(p, c) for c, name in enumerate(classes) for p in sorted((root / name).iterdir())
                      if is_image_file(p)]
        if not self.items:
            raise ValueError(f"no identity folders with images under {root}")
        self.size, self.classes = tuple(size), classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from .loader import preprocess_images

        path, c = self.items[i]
        return preprocess_images([str(path)], self.size)[0], c


def _num_classes(dataset) -> int:
    if isinstance(dataset, InMemoryDataset):
        return int(dataset.identities.max()) + 1
    if isinstance(dataset, FolderDataset):
        return len(dataset.classes)
    return int(max(int(dataset[i][1]) for i in range(len(dataset)))) + 1


def train_recognizer(model: nn.Module, dataset, options: TrainOptions | dict | None = None, *,
                     head: MarginSoftmax | None = None, augment: Callable | None = None,
                     after_epoch: Callable | None = None, log: Callable[[str], None] | None = None,
                     **deprecated) -> TrainingResult:
    """Train a plain face recognition model (forward -> embedding) with the CosFace margin softmax over the
    data set's identities. Same options, checkpoints and result as :func:`train_vitfiqa` (no quality term)."""
    options = _train_options(options, deprecated, "train_recognizer")
    return _train(model, dataset, options, None, head=head, augment=augment, after_epoch=after_epoch, log=log)


def train_vitfiqa(model: nn.Module, dataset, options: TrainOptions | dict | None = None, *, alpha: float = 10.0,
                  head: MarginSoftmax | None = None, augment: Callable | None = None,
                  after_epoch: Callable | None = None, log: Callable[[str], None] | None = None,
                  **deprecated) -> TrainingResult:
    """Train a ViT-FIQA model (forward -> (embedding, quality)). Returns a :class:`TrainingResult`: the margin
    head (``.head``, whose rows are the class centres) and the loss history per step (``.loss``, ``.fr``,
    ``.quality``).

    ``options``: a :class:`vitfiqa.options.TrainOptions` (or its dict): epochs, batch size, learning rate and
    weight decay, the CosFace ``s`` and ``m``, ``schedule`` (``constant`` or ``cosine``: linear warm-up over
    ``warmup`` steps, then cosine decay to zero), ``device``, ``seed``; ``checkpoint_dir`` (a checkpoint after
    every epoch and every ``checkpoint_every`` seconds; with ``resume`` training continues from the latest
    one: model, margin head, optimiser, schedule, position in the epoch); ``progress`` (a tqdm bar) or a
    ``log`` line every ``log_every`` steps. The old keywords (``epochs=``, ``lr=``, ...) still work for one
    release, with a DeprecationWarning.
    ``alpha``: weight of the quality regression; ``head`` (a trained :class:`MarginSoftmax` to continue from,
    e.g. the recogniser's class centres when fine-tuning from it); ``augment(x)`` applied to each batch;
    ``after_epoch(epoch, model, head) -> dict`` (e.g. a validation, stored in ``.epochs``); ``log`` (a function
    of one string; progress lines instead of the bar)."""
    options = _train_options(options, deprecated, "train_vitfiqa")
    return _train(model, dataset, options, alpha, head=head, augment=augment, after_epoch=after_epoch, log=log)


def _train_options(options, deprecated: dict, where: str) -> TrainOptions:
    if isinstance(options, int) and not isinstance(options, bool):  # the old third positional argument, epochs
        deprecated["epochs"], options = options, None
    changes = take_deprecated(deprecated, TrainOptions, "options", where, stacklevel=4)
    no_unknown(deprecated, where)
    options = TrainOptions.of(options)
    return options.replace(**changes) if changes else options


def _train(model: nn.Module, dataset, options: TrainOptions, alpha: float | None, *,
           head: MarginSoftmax | None = None, augment: Callable | None = None, after_epoch: Callable | None = None,
           log: Callable[[str], None] | None = None) -> TrainingResult:
    """The one training loop: CosFace (alpha None) or ViT-FIQA (CosFace + alpha * quality regression)."""
    import math
    import time

    from tqdm.auto import tqdm

    epochs, batch_size, lr, weight_decay = options.epochs, options.batch_size, options.lr, options.weight_decay
    s, m, schedule, warmup, device, seed = options.s, options.m, options.schedule, options.warmup, options.device, \
        options.seed
    checkpoint_dir, resume, checkpoint_every = options.checkpoint_dir, options.resume, options.checkpoint_every
    progress, log_every = options.progress, options.log_every
    if schedule not in ("constant", "cosine"):
        raise ValueError("schedule must be 'constant' or 'cosine'")
    check_batch_size(batch_size)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    torch.manual_seed(seed)
    model.to(device).eval()  # BatchNorm cannot see a batch of one in training mode
    with torch.no_grad():
        out = model(dataset[0][0][None].to(device))
    if (alpha is not None) != isinstance(out, (tuple, list)):
        raise ValueError("train_vitfiqa needs a model returning (embedding, quality); train_recognizer one "
                         "returning the embedding")
    feats = (out[0] if alpha is not None else out).shape[1]
    model.train()
    head = (head or MarginSoftmax(feats, _num_classes(dataset), s=s, m=m)).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = len(dataset) // batch_size if len(dataset) > batch_size else 1
    total = epochs * per_epoch

    def lr_at(step: int) -> float:
        if schedule == "constant":
            return lr
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    history: dict = {"loss": [], "fr": [], "quality": [], "epochs": []}
    start_epoch, start_batch = 0, 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt_dir and resume and (ckpt_dir / "last.pt").exists():
        # weights_only: a checkpoint folder may come from elsewhere; tensors, numbers and lists are all it holds
        state = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, start_batch = int(state["epoch"]), int(state.get("batch", 0))
        history.update({k: list(v) for k, v in state["history"].items()})

    def save(epoch: int, batch: int) -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_dir / "last.pt.tmp"
        torch.save({"model": model.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch, "batch": batch, "history": {k: v for k, v in history.items()}}, tmp)
        os.replace(tmp, ckpt_dir / "last.pt")  # a crash while saving never leaves a torn checkpoint

    last_save = t0 = time.time()
    for epoch in range(start_epoch, epochs):
        # the order of an epoch depends only on (seed, epoch), so a resumed epoch skips exactly what was done
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        batches = [order[i:i + batch_size].tolist() for i in range(0, per_epoch * batch_size, batch_size)] \
            if len(dataset) > batch_size else [order.tolist()]
        first = start_batch if epoch == start_epoch else 0
        # InMemoryDataset hands over whole batches (__getitems__), so there is nothing left to collate
        collate = (lambda batch: batch) if isinstance(dataset, InMemoryDataset) else None
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[first:], collate_fn=collate)
        bar = tqdm(loader, disable=not progress or log is not None, desc=f"epoch {epoch + 1}/{epochs}")
        for b, (x, y) in enumerate(bar, start=first):
            step = epoch * per_epoch + b
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x)
            if alpha is None:
                loss, _ = head(model(x), y)
                fr, ql = loss, torch.zeros(())
            else:
                emb, q = model(x)
                loss, fr, ql = vitfiqa_loss(emb, q, y, head, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("fr", fr), ("quality", ql)):
                history[k].append(float(v.detach()))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
            if log is not None and (step + 1) % log_every == 0:
                recent = history["loss"][-log_every:]
                log(f"epoch {epoch + 1}/{epochs} step {step + 1}/{total} loss {np.mean(recent):.3f} "
                    f"fr {np.mean(history['fr'][-log_every:]):.3f} quality {np.mean(history['quality'][-log_every:]):.4f} "
                    f"lr {lr_at(step):.2e} ({time.time() - t0:.0f} s)")
            if ckpt_dir and time.time() - last_save > checkpoint_every:
                save(epoch, b + 1)
                last_save = time.time()
        if after_epoch is not None:
            model.eval()
            history["epochs"].append({"epoch": epoch + 1, **after_epoch(epoch + 1, model, head)})
            model.train()
        if ckpt_dir:
            save(epoch + 1, 0)
            last_save = time.time()
    model.eval()
    return TrainingResult(head=head, **history)
