"""SER-FIQ (Terhörst et al., CVPR 2020): stochastic embedding robustness.

T forward passes with dropout (rate p, kept values scaled by 1/(1-p)) on the flattened final feature map, the
input of the embedding layer (512x7x7 for the iResNet / IR recognisers); the T embeddings are L2-normalised and
d is the mean Euclidean distance over all pairs i < j. Two columns:

``serfiq``
    the paper's score 2 * sigmoid(-d) = 2 / (1 + exp(d)).
``serfiq_released``
    the released code's return value (pterhoer/FaceImageQuality ``get_score``): the paper's score squashed again,
    1 / (1 + exp(-alpha * (score - r))) with alpha = 130, r = 0.88.

The dropout sits at the end of the network, so the backbone runs once per image and only the embedding layer
(and what follows it up to the embedding) runs T times; the released code runs the whole network T times, which
gives the same distribution of embeddings.

Randomness: the T dropout masks are drawn once per call from ``torch.Generator().manual_seed(seed)`` (on the
CPU, so the same on every device) and applied to every image. A seeded run is reproducible bit for bit, and an
image's score does not depend on its batch or its position in the input list.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import BaselineMethod, register

OPTIONS = {"T": 100, "p": 0.5, "alpha": 130.0, "r": 0.88, "seed": 0, "full_passes": False}


def dropout_masks(T: int, width: int, p: float, seed: int) -> torch.Tensor:
    """[T, width] float masks: 0 with probability p, else 1/(1-p)."""
    g = torch.Generator().manual_seed(int(seed))
    keep = torch.rand(T, width, generator=g) >= p
    return keep.float() / (1.0 - p)


def mean_pairwise_distance(e: torch.Tensor) -> torch.Tensor:
    """[B, T, D] L2-normalised embeddings -> [B] mean Euclidean distance over the pairs i < j (float64)."""
    e = e.double()
    g = e @ e.transpose(1, 2)
    d = torch.sqrt(torch.clamp(2.0 - 2.0 * g, min=0.0))
    T = e.shape[1]
    iu = torch.triu_indices(T, T, offset=1)
    return d[:, iu[0], iu[1]].mean(dim=1)


def scores_from_distance(d: torch.Tensor, alpha: float, r: float) -> dict[str, torch.Tensor]:
    paper = 2.0 / (1.0 + torch.exp(d))
    return {"serfiq": paper, "serfiq_released": 1.0 / (1.0 + torch.exp(-alpha * (paper - r)))}


def _check(T, p, alpha, r, seed):
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise ValueError(f"serfiq T (passes) must be an integer >= 2, got {T!r}")
    if not 0.0 < float(p) < 1.0:
        raise ValueError(f"serfiq p (dropout rate) must be in (0, 1), got {p!r}")
    if not (math.isfinite(float(alpha)) and math.isfinite(float(r))):
        raise ValueError("serfiq alpha and r must be finite numbers")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"serfiq seed must be an integer, got {seed!r}")


def _parts(model):
    from .nets import structure

    net = model.eager
    st = structure(net)
    if st.embedding_layer is None:
        raise ValueError(f"SER-FIQ needs a recogniser's embedding layer; {model.name} ({st.family}) outputs a quality")
    mods = dict(net.named_modules())
    return net, mods[st.embedding_layer], [mods[a] for a in st.after]


def compute(model, x: torch.Tensor, T: int = 100, p: float = 0.5, alpha: float = 130.0, r: float = 0.88,
            seed: int = 0, full_passes: bool = False) -> dict[str, torch.Tensor]:
    """``full_passes=True`` runs the whole network T times per image instead (as the released code; for
    benchmarks and checks): the same masks, the same scores up to float rounding."""
    _check(T, p, alpha, r, seed)
    net, layer, after = _parts(model)
    width = layer.in_features
    masks = dropout_masks(T, width, float(p), seed).to(x.device)
    out = []
    with torch.no_grad():
        if full_passes:
            for i in range(x.shape[0]):
                embs = torch.cat([_embedding_after(net, layer, after, x[i:i + 1], masks[t]) for t in range(T)])
                out.append(F.normalize(embs, dim=1)[None])
        else:
            feats = []
            handle = layer.register_forward_pre_hook(lambda m, args: feats.append(args[0]))
            try:
                net(x)  # the backbone once; the embedding layer's input is kept
            finally:
                handle.remove()
            f = feats[0]
            if f.dim() != 2 or f.shape[1] != width:
                raise ValueError(f"the embedding layer's input is {tuple(f.shape)}, not [B, {width}]")
            chunk = max(1, (1 << 24) // (T * width))  # images per head pass: ~64 MB of masked features
            for s in range(0, f.shape[0], chunk):
                z = layer((f[s:s + chunk, None, :] * masks[None]).reshape(-1, width))
                for m in after:
                    z = m(z)
                out.append(F.normalize(z.reshape(-1, T, z.shape[-1]), dim=2))
    d = mean_pairwise_distance(torch.cat(out))
    return scores_from_distance(d, float(alpha), float(r))


def _embedding_after(net, layer, after, x1, mask):
    """One full pass of ``net`` on ``x1`` with ``mask`` applied to the embedding layer's input; the embedding."""
    got = []
    h1 = layer.register_forward_pre_hook(lambda m, args: (args[0] * mask,))
    last = after[-1] if after else layer
    h2 = last.register_forward_hook(lambda m, args, out: got.append(out))
    try:
        net(x1)
    finally:
        h1.remove()
        h2.remove()
    return got[0]


METHOD = register(BaselineMethod(
    "serfiq", "SER-FIQ", (("serfiq", "SER-FIQ"), ("serfiq_released", "SER-FIQ (released)")), compute,
    options=OPTIONS, default_preset="arcface_r100",
    accepts="a recogniser whose embedding layer is found (iResNet, IR, MobileFaceNet, vitfiqa face ViT); "
            "TorchScript files of these layouts are rebuilt eagerly",
    description="robustness of T dropout embeddings"))
