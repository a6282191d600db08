"""Images/s of the full file pipeline (decode + preprocess + one-pass capture + ATTN and ViTNT scores) against
the bare model forward on ready-made tensors, on one device, in one run.

    python benchmarks/throughput.py [--device cpu|cuda] [--batch 64] [--images 512] [--dtype float32|float16]

Model: insightface-style vit_s (512 wide, 12 blocks, 8 heads, patch 9, 112x112), scripted. Images: JPEG files
of 112x112 aligned crops (smooth random content, ~5-10 kB each, like real face crops) written to a temp folder
and read back through vitfiqa.pipeline.score_files, the path the CLI and the Ray actors use.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import vitfiqa  # noqa: E402
from vitfiqa.loader import ImageLoader, to_model_input  # noqa: E402
from vitfiqa.models import face_vit  # noqa: E402
from vitfiqa.pipeline import score_files  # noqa: E402

from _common import MALLOC_NOTE_DEFAULT, MALLOC_NOTE_TUNED, machine, malloc_tuned, write_table  # noqa: E402


def write_jpegs(folder: str, n: int, seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((112, 112), Image.BICUBIC)).astype(np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        p = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on CPU, 256 on CUDA")
    ap.add_argument("--images", type=int, default=None, help="default: 2 batches on CPU, 40 on CUDA")
    ap.add_argument("--workers", type=int, default=None, help="decoding threads (default min(8, cores))")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--malloc-tuning", action="store_true",
                    help="re-run under glibc settings that keep freed memory for reuse (no page-fault storms)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tuned = malloc_tuned(args.malloc_tuning, __file__, argv)
    cuda = args.device.startswith("cuda")
    batch = args.batch or (256 if cuda else 64)
    n = args.images or batch * (40 if cuda else 2)
    n -= n % batch  # whole batches only, so both sides run the same batch shapes
    args.out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                        f"throughput_{args.device.split(':')[0]}_{args.dtype}{'_malloc_tuned' if tuned and not cuda else ''}.md")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "vit_s.pt")
        torch.jit.script(face_vit("vit_s").eval()).save(path)
        model = vitfiqa.load(path, vitfiqa.ModelOptions(device=args.device, dtype=args.dtype))
        files = write_jpegs(tmp, n)
        size_kb = np.mean([os.path.getsize(f) for f in files]) / 1024
        x = torch.randn(batch, 3, 112, 112, device=args.device).to(model.dtype)

        def bare():
            for _ in range(n // batch):
                model._core.forward(x)  # the plain TorchScript forward, no vitfiqa Python around it
            sync()

        def in_memory():
            for _ in range(n // batch):
                model.score(x, methods=("attn", "vitnt"), preprocess=False)
            sync()

        def pipeline():
            for sb in score_files(model, files, ("attn", "vitnt"), run=vitfiqa.RunOptions(batch_size=batch, workers=args.workers)):
                sb.result.numpy()  # results on the host, as a user gets them
            sync()

        def loader_only(processes):
            def run():  # 4 passes: one alone is too short to time well
                for b in ImageLoader(files * 4, batch, workers=args.workers, pin_memory=cuda, processes=processes):
                    to_model_input(b.images, model)
                sync()
            return run

        fns = {"bare TorchScript forward (tensor already on device)": bare,
               "vitfiqa score, tensor already on device": in_memory,
               f"vitfiqa pipeline: JPEG decode ({'processes' if cuda else 'threads'}) + preprocess + score": pipeline,
               "decode + preprocess + transfer alone, threads (no model)": loader_only(False),
               "decode + preprocess + transfer alone, processes (no model)": loader_only(True)}
        for fn in fns.values():  # warm-up: allocator, graph executor profiling, page cache
            fn()
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    count = {k: n * 4 if k.startswith("decode") else n for k in med}
    base = n / med["bare TorchScript forward (tensor already on device)"]
    rows = [[k, f"{count[k] / v:.1f}", f"{(count[k] / v) / base:.3f}"] for k, v in med.items()]
    dev = torch.cuda.get_device_name() if cuda else "CPU"
    text = write_table(
        args.out, f"Throughput: vit_s 112x112, batch {batch}, {n} images, {args.device} ({dev}), {args.dtype}",
        ["pipeline", "images / s", "x bare forward"], rows,
        [f"Machine: {machine()}.", f"Median of {args.repeats} interleaved passes over all {n} images after one warm-up "
         f"pass each; JPEG files average {size_kb:.1f} kB; decoding workers: {args.workers or min(8, os.cpu_count() or 1)}.",
         "glibc malloc: " + (MALLOC_NOTE_TUNED if tuned else MALLOC_NOTE_DEFAULT)])
    print(text)
    return med


if __name__ == "__main__":
    main()
