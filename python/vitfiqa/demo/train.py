"""Train and export the two embedded demo models on synthetic faces (``vitfiqa train-demo``).

1. The **recogniser**: the package's face ViT (:class:`vitfiqa.models.FaceViT`) trained the face-recognition
   way, CosFace margin softmax over the training identities (:func:`vitfiqa.training.train_recognizer`).
   ATTN-FIQA and ViTNT-FIQA read this model.
2. The **quality model**: a ViT-FIQA quality-token model (:class:`vitfiqa.models.ViTFIQA`) of the same size,
   initialised from the recogniser (backbone, embedding head and class centres; the quality token, its
   position and the quality head are new) and fine-tuned with :func:`vitfiqa.training.train_vitfiqa`
   (CosFace + 10 x SmoothL1 to the CR-FIQA certainty ratio). ViT-FIQA and EX-FIQA read this model.
   Fine-tuning from the recogniser is how ViT-FIQA is trained in practice (from a trained FR backbone), and it
   halves the cost against training the second model from scratch.

Data: ``identities`` training identities x ``samples`` renders each (:mod:`vitfiqa.demo.faces`, namespace
TRAIN), rendered once at the start; each batch is flipped at random and a share of its images is degraded
(blur, noise, down-sampling, occlusion, JPEG compression, over- and under-exposure) as real face-recognition
training sets contain low-quality images; without them nothing in training would tell certainty from image
quality. Every degradation of the demo study is thus seen in training (on other identities). Validation after
every epoch: clean-pair FNMR at FMR 1e-3 on held-out identities (namespace HELD_OUT, never trained on).

``init_recognizer`` starts the recogniser from a trained TorchScript recogniser of the same architecture (e.g.
the embedded one) instead of from scratch; its CosFace class centres then start at each training identity's
mean embedding. This is how the embedded models were refreshed with the full degradation set on a loaded
machine (see benchmarks/results/demo_training.md).

Both runs checkpoint every few minutes under ``work_dir`` and resume from there when started again.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..eval import fnmr_at_fmr
from ..models import FaceViT, ViTFIQA, export_torchscript
from ..preprocess import DEFAULT_CHANNEL_ORDER, DEFAULT_IMAGE_SIZE, DEFAULT_NORMALIZATION, normalize_uint8
from ..options import TrainOptions
from ..training import InMemoryDataset, MarginSoftmax, train_recognizer, train_vitfiqa
from . import QUALITY_MODEL, RECOGNIZER, DemoConfig
from .faces import HELD_OUT, TRAIN, render_faces



def render_set(identities: int, samples: int, size: int, namespace: int = TRAIN, chunk: int = 512):
    """All ``samples`` renders of identities 0..identities-1 -> (uint8 [N,size,size,3], identity [N])."""
    ids = np.repeat(np.arange(identities), samples)
    smp = np.tile(np.arange(samples), identities)
    out = np.empty((len(ids), size, size, 3), np.uint8)
    for i in range(0, len(ids), chunk):
        out[i:i + chunk] = render_faces(ids[i:i + chunk], smp[i:i + chunk], size, namespace)
    return out, ids


def _cached_render(work: Path, cfg: DemoConfig):
    """The training renders, kept in ``work`` (plain .npy, no pickle) so a resumed run does not render again."""
    key = f"{cfg.identities}x{cfg.samples}x{cfg.image_size}"
    path = work / f"renders_{key}.npy"
    if path.exists():
        images = np.load(path, mmap_mode="r", allow_pickle=False)
        if images.shape == (cfg.identities * cfg.samples, cfg.image_size, cfg.image_size, 3):
            return np.array(images), np.repeat(np.arange(cfg.identities), cfg.samples)
    images, ids = render_set(cfg.identities, cfg.samples, cfg.image_size)
    np.save(work / "renders.tmp.npy", images)
    (work / "renders.tmp.npy").replace(path)
    return images, ids


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """One preprocessed [1,3,H,W] image in [-1, 1] through a JPEG encode/decode at ``quality`` (Pillow)."""
    import io

    from PIL import Image

    u8 = ((x[0].permute(1, 2, 0) * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        back = np.asarray(im.convert("RGB"))
    return (torch.from_numpy(back.copy()).permute(2, 0, 1)[None].to(x.dtype) / 255 - 0.5) / 0.5


# The degradations a real face-recognition training set contains, as the augmentation draws them; the demo study
# (vitfiqa.demo.study.LEVELS) degrades its held-out images by the same kinds, over about the same ranges.
DEGRADATIONS = ("blur", "noise", "lowres", "occlusion", "jpeg", "overexposure", "underexposure")


def make_augment(share: float, seed: int = 0):
    """Batch augmentation on preprocessed [-1, 1] images: random horizontal flip, and for ``share`` of the
    images one random degradation (:data:`DEGRADATIONS`, equally likely) of random strength."""
    g = torch.Generator().manual_seed(seed)

    def augment(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        n, _, h, w = x.shape
        flip = torch.rand(n, generator=g) < 0.5
        x[flip] = x[flip].flip(3)
        pick = torch.nonzero(torch.rand(n, generator=g) < share).reshape(-1).tolist()
        for i in pick:
            kind = DEGRADATIONS[int(torch.randint(0, len(DEGRADATIONS), (1,), generator=g))]
            t = float(torch.rand(1, generator=g))  # strength in [0, 1)
            xi = x[i:i + 1]
            if kind == "blur":  # sigma 0.6..4.8 px at 112x112
                xi = _gaussian_blur(xi, (0.6 + 4.2 * t) * h / 112)
            elif kind == "noise":  # std 6..70 grey levels
                xi = xi + torch.randn(xi.shape, generator=g) * (0.05 + 0.5 * t)
            elif kind == "lowres":  # down-scaled to 0.55..0.12 of the side, then back up
                f = 0.55 - 0.43 * t
                small = F.interpolate(xi, size=(max(4, int(h * f)), max(4, int(w * f))), mode="bilinear",
                                      align_corners=False, antialias=True)
                xi = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            elif kind == "occlusion":  # a square of one random colour over 6%..49% of the image
                side = int((0.25 + 0.45 * t) * h)
                r0, c0 = (int(v) for v in torch.randint(0, h - side, (2,), generator=g))
                xi = xi.clone()
                xi[..., r0:r0 + side, c0:c0 + side] = (torch.rand(3, generator=g) * 2 - 1).view(1, 3, 1, 1)
            elif kind == "jpeg":  # quality 40..3
                xi = _jpeg(xi, round(40 - 37 * t))
            elif kind == "overexposure":  # the [0, 1] image times 1.4..3.8, clipped
                xi = ((xi * 0.5 + 0.5) * (1.4 + 2.4 * t)).clamp(0, 1) * 2 - 1
            else:  # underexposure: times 0.6..0.07
                xi = ((xi * 0.5 + 0.5) * (0.6 - 0.53 * t)).clamp(0, 1) * 2 - 1
            x[i] = xi[0].clamp(-1, 1)
        return x

    return augment


def validation_set(identities: int = 200, samples: int = 4, size: int = DEFAULT_IMAGE_SIZE[0]):
    """Held-out identities (never trained on): uint8 images and identities."""
    return render_set(identities, samples, size, HELD_OUT)


def clean_fnmr(model, images: np.ndarray, ids: np.ndarray, fmr: float = 1e-3) -> dict:
    """Verification on every pair of the given images: FNMR at ``fmr`` and the pair counts."""
    with torch.no_grad():
        embs = []
        for i in range(0, len(images), 256):
            out = model(normalize_uint8(torch.from_numpy(images[i:i + 256])))
            embs.append(out[0] if isinstance(out, tuple) else out)
        e = F.normalize(torch.cat(embs)).numpy()
    sims = e @ e.T
    iu = np.triu_indices(len(ids), 1)
    same = ids[iu[0]] == ids[iu[1]]
    s = sims[iu]
    return {"fnmr_at_fmr_1e-3": float(fnmr_at_fmr(s[same], s[~same], fmr)), "genuine_pairs": int(same.sum()),
            "impostor_pairs": int((~same).sum())}


def quality_from_recognizer(recognizer: FaceViT, cfg: DemoConfig) -> ViTFIQA:
    """A ViT-FIQA token model with the recogniser's weights; the quality token, its position embedding and the
    quality head start fresh."""
    q = ViTFIQA(**cfg.model_kwargs())
    state = recognizer.state_dict()
    pos = q.pos_embed.detach().clone()
    pos[:, 1:] = state.pop("pos_embed")
    state["pos_embed"] = pos
    missing, unexpected = q.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"quality_token", "head_qs.0.weight", "head_qs.0.bias", "head_qs.0.running_mean",
                                     "head_qs.0.running_var", "head_qs.1.weight"}:
        raise RuntimeError(f"recogniser and quality model do not match: {missing} {unexpected}")
    return q


def init_from_recognizer(model: FaceViT, path: str | Path, images: np.ndarray, ids: np.ndarray,
                         cfg: DemoConfig) -> MarginSoftmax:
    """Load a TorchScript recogniser's weights into ``model`` (same architecture) and return a CosFace head
    whose class centres are the identities' mean normalised embeddings of the (clean) training images."""
    ts = torch.jit.load(str(path), map_location="cpu")  # TorchScript archive: no pickle of Python objects
    model.load_state_dict(ts.state_dict())
    model.eval()
    sums = torch.zeros(int(ids.max()) + 1, cfg.num_features)
    with torch.no_grad():
        for i in range(0, len(images), 256):
            e = F.normalize(model(normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[i:i + 256])))))
            sums.index_add_(0, torch.from_numpy(np.asarray(ids[i:i + 256], dtype=np.int64)), e)
    head = MarginSoftmax(cfg.num_features, len(sums), s=cfg.s, m=cfg.m)
    head.weight.data.copy_(F.normalize(sums))
    return head


def _input_contract(cfg: DemoConfig) -> dict:
    # what the models were trained on: clean_fnmr and InMemoryDataset prepare batches with normalize_uint8's
    # defaults, which are these
    return {"image_size": [cfg.image_size, cfg.image_size], "channel_order": DEFAULT_CHANNEL_ORDER,
            "normalization": DEFAULT_NORMALIZATION}


def train(cfg: DemoConfig | None = None, work_dir: str | Path = "vitfiqa-train-demo", recognizer_out: Path = RECOGNIZER,
          quality_out: Path = QUALITY_MODEL, threads: int | None = None, val_identities: int = 200,
          log=print) -> dict:
    """Render the data, train both models (resuming from ``work_dir``), export them; returns a summary."""
    cfg = cfg or DemoConfig()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t0 = time.time()
    images, ids = _cached_render(work, cfg)
    val_images, val_ids = validation_set(val_identities, 4, cfg.image_size)
    t_render = time.time() - t0
    log(f"rendered {len(images)} training images ({cfg.identities} identities) and {len(val_images)} held-out "
        f"images in {t_render:.0f} s")
    data = InMemoryDataset(torch.from_numpy(images), ids)

    def validate(epoch, model, head):
        r = clean_fnmr(model, val_images, val_ids)
        log(f"epoch {epoch}: held-out clean FNMR@FMR1e-3 {r['fnmr_at_fmr_1e-3']:.3f} ({time.time() - t0:.0f} s)")
        return r

    common = TrainOptions(batch_size=cfg.batch_size, s=cfg.s, m=cfg.m, schedule="cosine", seed=cfg.seed,
                          checkpoint_every=240.0)
    hooks = dict(augment=make_augment(cfg.degrade_share, cfg.seed), after_epoch=validate, log=log)
    torch.manual_seed(cfg.seed)
    recognizer = FaceViT(**cfg.model_kwargs())
    t1 = time.time()
    head = None
    if cfg.init_recognizer and not (work / "recognizer" / "last.pt").exists():  # a resumed run has it all
        head = init_from_recognizer(recognizer, cfg.init_recognizer, images, ids, cfg)
        log(f"recogniser initialised from {cfg.init_recognizer}; class centres = identity mean embeddings "
            f"({time.time() - t1:.0f} s)")
    rec_run = train_recognizer(recognizer, data, common.replace(epochs=cfg.recognizer_epochs, lr=cfg.recognizer_lr,
                                                                warmup=300, checkpoint_dir=work / "recognizer"),
                               head=head, **hooks)
    t_rec = time.time() - t1
    quality = quality_from_recognizer(recognizer, cfg)
    t2 = time.time()
    q_run = train_vitfiqa(quality, data, common.replace(epochs=cfg.quality_epochs, lr=cfg.quality_lr, warmup=100,
                                                        checkpoint_dir=work / "vitfiqa"),
                          head=_copy_head(rec_run.head, cfg), **hooks)
    t_q = time.time() - t2
    contract = _input_contract(cfg)
    recognizer_out.parent.mkdir(parents=True, exist_ok=True)
    export_torchscript(recognizer.eval(), str(recognizer_out), input_contract=contract)
    export_torchscript(quality.eval(), str(quality_out), input_contract=contract)
    summary = dict(config=asdict(cfg), render_seconds=round(t_render, 1), recognizer_seconds=round(t_rec, 1),
                   quality_seconds=round(t_q, 1), total_seconds=round(time.time() - t0, 1),
                   recognizer_validation=rec_run.epochs, quality_validation=q_run.epochs,
                   recognizer_final_loss=float(np.mean(rec_run.loss[-100:])),
                   quality_final_loss=float(np.mean(q_run.loss[-100:])),
                   recognizer=str(recognizer_out), quality_model=str(quality_out))
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"exported {recognizer_out} and {quality_out}; {summary['total_seconds']:.0f} s in all")
    return summary


def _copy_head(head: MarginSoftmax, cfg: DemoConfig) -> MarginSoftmax:
    """The recogniser's class centres as the starting head of the quality model's fine-tuning."""
    new = MarginSoftmax(head.weight.shape[1], head.weight.shape[0], s=cfg.s, m=cfg.m)
    new.load_state_dict(head.state_dict())
    return new

