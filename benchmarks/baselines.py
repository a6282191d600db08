"""Images per second of each baseline (vitfiqa.baselines) against its network's plain forward, in the same run,
on CPU; SER-FIQ's head-only passes against T whole-network passes (what the released code does); and the spread
of SER-FIQ scores over seeds.

Networks: each method's default preset at full depth (random weights in the official layout: speed does not
depend on the values), 112x112 synthetic faces (vitfiqa.demo.faces). Timings alternate the plain forward and the
method each round (:func:`_common.interleaved_medians`), so load changes hit both alike; the ratio is the
meaningful number on a shared machine.

    python benchmarks/baselines.py [--images 4] [--repeats 3] [--full-images 1] [--out benchmarks/results/baselines_cpu.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_medians, machine, write_table  # noqa: E402

import vitfiqa.baselines as vb  # noqa: E402


def faces(n: int, seed: int = 0) -> np.ndarray:
    from vitfiqa.demo.faces import render_faces

    return render_faces(np.arange(n) + seed, np.zeros(n, np.int64))


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4, help="images per timed call (one batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--T", type=int, default=100, help="SER-FIQ passes")
    ap.add_argument("--full-images", type=int, default=1, help="images for SER-FIQ's T whole-network passes")
    ap.add_argument("--full-T", type=int, help="whole-network passes timed (default T; fewer on a slow machine: "
                                               "the time is linear in the passes, each one forward)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds for SER-FIQ's spread")
    ap.add_argument("--methods", default=",".join(vb.METHODS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "baselines_cpu.md"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    imgs = faces(args.images)
    rows, notes = [], []
    load0 = os.getloadavg()[0]
    for name in args.methods.split(","):
        method = vb.REGISTRY[name]
        model = vb.load(method.default_preset)
        with torch.no_grad():  # random weights of the official layout, BN statistics sane
            for mod in model.network.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_var is not None:
                    mod.running_var.uniform_(0.5, 1.5)
        x = model.prepare(imgs)
        opts = {"T": args.T} if name == "serfiq" else {}

        def plain():
            with torch.no_grad():
                model.network(x)

        def scored():
            method.compute(model, x, **opts)

        t = interleaved_medians({"plain": plain, "method": scored}, args.repeats, warmup=1)
        n = x.shape[0]
        rows.append([f"{method.title} (`{name}`)", f"`{method.default_preset}`", n, f"{n / t['plain']:.2f}",
                     f"{n / t['method']:.2f}", f"{t['method'] / t['plain']:.2f}"])
        print(rows[-1], flush=True)
        if name == "serfiq":
            xf, tf = x[:args.full_images], args.full_T or args.T
            t0 = time.perf_counter()
            full = method.compute(model, xf, T=tf, full_passes=True)["serfiq"]
            t_full = time.perf_counter() - t0
            t0 = time.perf_counter()
            head = method.compute(model, xf, T=tf)["serfiq"]
            t_head_tf = time.perf_counter() - t0
            rel = float((full - head).abs().max() / head.abs().max())
            t_full_T = t_full * args.T / tf  # linear: each pass is one whole forward
            t_head = t["method"] * len(xf) / n
            how = "measured" if tf == args.T else f"{tf} passes measured ({t_full:.1f} s), scaled to {args.T}"
            rows.append([f"SER-FIQ, {args.T} whole-network passes (released code's way; {how})",
                         f"`{method.default_preset}`", len(xf), "", f"{len(xf) / t_full_T:.4f}",
                         f"{t_full_T / (t['plain'] * len(xf) / n):.1f}"])
            notes.append(f"SER-FIQ head-only vs whole-network passes, T={args.T}, {len(xf)} image(s): {t_head:.2f} s vs "
                         f"{t_full_T:.1f} s ({t_full_T / t_head:.0f}x; {how}). With T={tf} the same masks give "
                         f"scores equal to {rel:.1e} (relative) either way; head-only took {t_head_tf:.2f} s.")
            seeds = np.stack([method.compute(model, x, T=args.T, seed=s)["serfiq"].numpy()
                              for s in range(args.seeds)])
            notes.append(f"SER-FIQ spread over {args.seeds} seeds (T={args.T}): per-image std over seeds "
                         f"{seeds.std(axis=0).mean():.2e} (mean over {n} images), std of the scores across the "
                         f"images {seeds.mean(axis=0).std():.2e}; mean score {seeds.mean():.4f}. (Random-weight "
                         "network of the official layout on synthetic faces: the ratio, not the values, carries over.)")
    notes = [f"Machine: {machine()}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
             "(a shared machine: compare the ratio column, measured in the same run, alternating).",
             "plain = the network's forward (torch.no_grad); ratio = method time / plain time for the same batch. "
             "GraFIQs needs a backward pass per batch; SER-FIQ runs the backbone once and the embedding layer "
             "T times."] + notes + [
             f"Command: python benchmarks/baselines.py --images {args.images} --repeats {args.repeats} --T {args.T} "
             f"--full-images {args.full_images} --full-T {args.full_T or args.T} --seeds {args.seeds}"]
    return write_table(args.out, "Baselines on CPU: images/s against the plain forward",
                       ["method", "network (preset)", "images", "plain forward img/s", "method img/s",
                        "ratio (time)"], rows, notes)


if __name__ == "__main__":
    print(main())
