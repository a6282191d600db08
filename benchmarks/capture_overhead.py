"""Cost of vitfiqa's one-pass capture + ATTN/ViTNT scoring against the plain TorchScript forward and an
eager PyTorch + Python forward-hooks baseline, on the same model and batch, in one run.

    python benchmarks/capture_overhead.py [--batch 64] [--repeats 7] [--device cpu]

Model: insightface-style ViT, 512 wide, 12 blocks, 8 heads, patch 9, 112x112 (144 tokens).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import vitfiqa  # noqa: E402
from vitfiqa.models import face_vit  # noqa: E402

from _common import MALLOC_NOTE_DEFAULT, MALLOC_NOTE_TUNED, interleaved_medians, machine, malloc_tuned, write_table  # noqa: E402


def eager_hooks_scorer(model):
    """The obvious alternative: forward hooks record block outputs and attention inputs, then Python
    recomputes the last block's q, k (hooks cannot see inside the attention) and both scores."""
    outs, attn_in = [], []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: outs.append(o))
    model.blocks[-1].attn.register_forward_pre_hook(lambda m, a: attn_in.append(a[0]))

    def score(x):
        outs.clear()
        attn_in.clear()
        with torch.no_grad():
            model(x)
            attn = model.blocks[-1].attn
            b, n, c = attn_in[0].shape
            qkv = attn.qkv(attn_in[0]).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
            logits = (qkv[0] @ qkv[1].transpose(-2, -1)) * attn.scale
            attn_score = logits.mean(dim=(1, 2, 3))
            z = [F.normalize(model.norm(o), dim=-1) for o in outs]
            d = sum(torch.linalg.vector_norm(z[t + 1] - z[t], dim=-1) for t in range(len(z) - 1)) / (len(z) - 1)
            vitnt = (2 / (1 + torch.exp(8.0 * d))).mean(1)
        return attn_score, vitnt

    return score


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc-tuning", action="store_true",
                    help="re-run under glibc settings that keep freed memory for reuse (no page-fault storms)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tuned = malloc_tuned(args.malloc_tuning, __file__, argv)
    if args.out is None:
        args.out = os.path.join(os.path.dirname(__file__), "results",
                                f"capture_overhead_{args.device}{'_malloc_tuned' if tuned else ''}.md")

    torch.manual_seed(0)
    model = face_vit("vit_s").eval().to(args.device)
    x = torch.randn(args.batch, 3, 112, 112, device=args.device)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "vit_s.pt")
        torch.jit.script(model).save(path)
        m = vitfiqa.load(path, vitfiqa.ModelOptions(device=args.device))
    eager = eager_hooks_scorer(model)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(fn):
        def call():
            fn()
            sync()
        return call

    fns = {
        "plain TorchScript forward": run(lambda: m.forward(x)),
        "vitfiqa score (attn+vitnt, one pass)": run(lambda: m.score(x, methods=("attn", "vitnt"))),
        "eager PyTorch + Python hooks": run(lambda: eager(x)),
    }
    t = interleaved_medians(fns, args.repeats)
    base = t["plain TorchScript forward"]
    rows = [[k, f"{v * 1000:.1f}", f"{v / base:.3f}", f"{args.batch / v:.1f}"] for k, v in t.items()]
    text = write_table(
        args.out, f"Capture overhead: vit_s (512 wide, 12 blocks), 112x112, batch {args.batch}, {args.device}",
        ["pipeline", "median ms / batch", "x plain forward", "images / s"], rows,
        [f"Machine: {machine()}.", f"Median of {args.repeats} interleaved runs after 3 warm-up runs each.",
         "glibc malloc: " + (MALLOC_NOTE_TUNED if tuned else MALLOC_NOTE_DEFAULT)])
    print(text)
    return t


if __name__ == "__main__":
    main()
