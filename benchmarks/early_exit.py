"""Cost of an EX-FIQA single-exit query against the full forward pass: the rewritten graph stops at the
exit block, so exit l of L should cost about l/L of the pass.

    python benchmarks/early_exit.py [--batch 32] [--repeats 5]

Model: ViT-FIQA quality-token ViT, vit_s size (512 wide, 12 blocks), 112x112.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
import vitfiqa  # noqa: E402
from vitfiqa.models import face_vit  # noqa: E402

from _common import interleaved_medians, machine, write_table  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--exits", default="1,3,6,9,12", help="1-based exit depths")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "early_exit.md"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = face_vit("vit_s", quality="token").eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "vitfiqa.pt")
        torch.jit.script(model).save(path)
        m = vitfiqa.load(path)
    x = torch.randn(args.batch, 3, 112, 112)
    depths = [int(d) for d in args.exits.split(",")]
    fns = {"full forward": lambda: m.forward(x)}
    for d in depths:
        fns[f"exit {d}"] = (lambda d=d: m.score(x, methods=["exfiqa"], exits=[d - 1]))
    fns["all exits + fusions"] = lambda: m.score(x, methods=["vitfiqa", "exfiqa"])
    t = interleaved_medians(fns, args.repeats, warmup=2)
    full = t["full forward"]
    rows = [[k, f"{v * 1000:.0f}", f"{v / full:.3f}", f"{int(k.split()[1]) / 12:.3f}" if k.startswith("exit") else ""]
            for k, v in t.items()]
    print(write_table(args.out, f"EX-FIQA early exits: vit_s quality-token ViT, 112x112, batch {args.batch}, cpu",
                      ["query", "median ms", "x full forward", "l / L"], rows,
                      [f"Machine: {machine()}.", f"Median of {args.repeats} interleaved runs."]))


if __name__ == "__main__":
    main()
