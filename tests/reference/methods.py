"""Independent pure-PyTorch reference for every method: eager modules, Python forward hooks and the
plain definitions of docs/methods.md written out directly (full N x N logits, explicit loops).
Nothing here calls vitfiqa's C++ core."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Recorder:
    """Records each block's output and each attention module's input with forward hooks."""

    def __init__(self, model):
        self.model = model
        self.block_outputs: list[torch.Tensor] = []
        self.attn_inputs: list[torch.Tensor] = []
        self.handles = []
        for blk in model.blocks:
            # Blocks of the ATTN/ViTNT repositories' ViT return (tokens, attention).
            self.handles.append(blk.register_forward_hook(
                lambda m, i, o: self.block_outputs.append(o[0] if isinstance(o, tuple) else o)))
            self.handles.append(blk.attn.register_forward_pre_hook(lambda m, args: self.attn_inputs.append(args[0])))

    def __call__(self, x):
        self.block_outputs.clear()
        self.attn_inputs.clear()
        with torch.no_grad():
            out = self.model(x)
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def logits(model, x_in: torch.Tensor, block: int, full: bool = False) -> torch.Tensor:
    """Pre-softmax logits (q k^T) * scale of one block, float64 [B,H,N,N], from the attention's input;
    full=True adds the block's relative-position bias table (the whole softmax input)."""
    attn = model.blocks[block].attn
    b, n, c = x_in.shape
    h = attn.num_heads
    with torch.no_grad():
        qkv = attn.qkv(x_in).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
    scale = (c // h) ** -0.5
    out = (q.double() @ k.double().transpose(-2, -1)) * scale
    if full and getattr(attn, "rel_pos", None) is not None:
        out = out + attn.rel_pos.table.detach().double()
    return out


def run(model, x):
    rec = Recorder(model)
    try:
        out = rec(x)
        return out, list(rec.block_outputs), list(rec.attn_inputs)
    finally:
        rec.close()


def attn_fiqa(model, x, block: int = -1, first_token: int = 0):
    _, _, inputs = run(model, x)
    lg = logits(model, inputs[block], block % len(model.blocks))
    lg = lg[:, :, first_token:, first_token:]
    return lg.mean(dim=(1, 2, 3))


def grid_heatmaps(per_patch: torch.Tensor, grid, size, normalize: str = "image", value_range=None):
    """The official ATTN-FIQA plot convention, written out per image: reshape to the patch grid, min-max
    (each image's own, or one (lo, hi) for all images) as (g - lo) / (hi - lo + 1e-8) clipped to [0, 1],
    then bilinear resize (half-pixel centres, as cv2.INTER_LINEAR)."""
    grids = [p.float().reshape(grid[0], grid[1]) for p in per_patch]
    if normalize == "global":
        lo, hi = value_range or (min(g.min().item() for g in grids), max(g.max().item() for g in grids))
    out = []
    for g in grids:
        if normalize == "image":
            lo, hi = g.min().item(), g.max().item()
        if normalize != "none":
            g = ((g - lo) / (hi - lo + 1e-8)).clamp(0, 1)
        out.append(F.interpolate(g[None, None], size=size, mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(out)


def attn_key_means(model, x, prefix: int, block: int = -1):
    """What each patch key receives: head mean, then mean over all queries, of the pre-softmax logits."""
    _, _, inputs = run(model, x)
    lg = logits(model, inputs[block], block % len(model.blocks))
    return lg.mean(1).mean(1)[:, prefix:]


def attn_heatmap(model, x, prefix: int, grid, block: int = -1, normalize: str = "image", value_range=None):
    return grid_heatmaps(attn_key_means(model, x, prefix, block), grid, x.shape[-2:], normalize, value_range)


def step_distances(outs, norm, blocks) -> list[torch.Tensor]:
    """||z_next - z|| per token [B,N] (float64) of consecutive selected blocks, z = the unit-normalised
    final-norm block output."""
    with torch.no_grad():
        z = [F.normalize(norm(outs[b]).double(), dim=-1) for b in blocks]
    return [torch.linalg.vector_norm(z[t + 1] - z[t], dim=-1) for t in range(len(z) - 1)]


def vitnt_fiqa(model, x, prefix: int, blocks=None, s: float = 8.0, weighting: str = "uniform",
               attention_blocks: str = "last"):
    _, outs, inputs = run(model, x)
    blocks = list(range(len(outs))) if blocks is None else sorted(b % len(outs) for b in blocks)
    d = sum(step_distances(outs, model.norm, blocks))[:, prefix:] / (len(blocks) - 1)
    q = 2.0 / (1.0 + torch.exp(s * d))
    if weighting == "uniform":
        return q.mean(1), q
    # The official ViTNT weights: per block, head-mean post-softmax attention (the model's own, bias included)
    # summed over queries; with attention_blocks="all" averaged over the selected blocks; then normalised
    # over the patch keys.
    weighted = blocks if attention_blocks == "all" else blocks[-1:]
    received = sum(torch.softmax(logits(model, inputs[b], b, full=True), dim=-1).mean(1).sum(1)
                   for b in weighted) / len(weighted)
    received = received[:, prefix:]
    w = received / received.sum(1, keepdim=True)
    return (q * w).sum(1), q


def vitfiqa(model, x):
    with torch.no_grad():
        return model(x)[1].reshape(-1).double()


def exit_scores(model, x, variant: str):
    """EX-FIQA per-exit scores [L,B]: final norm + frozen heads at every block output."""
    _, outs, _ = run(model, x)
    rows = []
    with torch.no_grad():
        for o in outs:
            t = model.norm(o)
            if variant == "T":
                s = model.head_qs(t[:, 0])
            else:
                s = model.head_qs(model.feature(t.flatten(1)))
            rows.append(s.reshape(-1).double())
    return torch.stack(rows)


def fuse(exits: torch.Tensor, depths, fusion: str, normalization: str = "none"):
    s = exits.double().clone()
    for i in range(s.shape[0]):
        row = s[i]
        if normalization == "zscore":
            mu = sum(row.tolist()) / len(row)
            sd = math.sqrt(sum((v - mu) ** 2 for v in row.tolist()) / len(row))
            s[i] = (row - mu) / sd
        elif normalization == "minmax":
            s[i] = (row - row.min()) / (row.max() - row.min())
    if fusion == "mean":
        return s.mean(0)
    w = torch.tensor([float(d) for d in depths], dtype=torch.float64)
    return (s * (w / w.sum())[:, None]).sum(0)
