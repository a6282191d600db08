"""Train and export the demo recognizer (reproducible; the exported model ships with the package).

    python -m vitfiqa.demo.train [--epochs 3] [--out python/vitfiqa/assets/demo_vit.pt]

Model: the package's insightface-style face ViT at demo size (32x32 input, patch 4, 64 tokens, 96 wide,
6 blocks, 4 heads, 128-d embedding), trained with CosFace margin softmax (s=30, m=0.35) on the 60,000
Fashion-MNIST training images, each class an "identity". Seeded; a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import FaceViT
from .data import load_split, to_tensor

ASSET = Path(__file__).resolve().parent.parent / "assets" / "demo_vit.pt"


def demo_model() -> FaceViT:
    return FaceViT(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=4, mlp_ratio=2.0, num_features=128)


class CosFace(torch.nn.Module):
    def __init__(self, features: int, classes: int, s: float = 30.0, m: float = 0.35):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, features) * 0.01)
        self.s, self.m = s, m

    def forward(self, emb, labels):
        cos = F.normalize(emb) @ F.normalize(self.weight).t()
        logits = self.s * (cos - self.m * F.one_hot(labels, cos.shape[1]))
        return F.cross_entropy(logits, labels)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    shift = torch.randint(-2, 3, (2,), generator=g).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3))


def train(epochs: int = 3, batch: int = 256, out: Path = ASSET, seed: int = 0, log=print) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xs, ys = load_split("train")
    x_all, y_all = to_tensor(xs), torch.from_numpy(ys)
    model, head = demo_model(), CosFace(128, 10)
    params = list(model.parameters()) + list(head.parameters())
    steps = epochs * (len(x_all) // batch)
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    t0, step, losses = time.time(), 0, []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(perm) - batch + 1, batch):
            idx = perm[i:i + batch]
            loss = head(model(augment(x_all[idx], g)), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                log(f"epoch {epoch} step {step}/{steps} loss {np.mean(losses[-100:]):.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    xt, yt = load_split("test")
    with torch.no_grad():
        emb = F.normalize(torch.cat([model(to_tensor(xt[i:i + 1000])) for i in range(0, len(xt), 1000)]))
        centres = F.normalize(head.weight)
        acc = ((emb @ centres.t()).argmax(1) == torch.from_numpy(yt)).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(out))
    info = dict(steps=steps, final_loss=float(np.mean(losses[-100:])), test_accuracy=acc,
                seconds=time.time() - t0, path=str(out))
    log(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB); held-out nearest-class accuracy {acc:.3f}")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ASSET)
    args = ap.parse_args(argv)
    train(args.epochs, args.batch, args.out)


if __name__ == "__main__":
    main()
