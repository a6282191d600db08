"""The evaluation part of `vitfiqa reproduce` at full IJB-C 1:1 scale, with bounded memory.

    python benchmarks/reproduce_ijbc_scale.py [--dir /tmp/vitfiqa-ijbc-scale] [--images 469375] ...

A synthetic IJB-C is written in the release layout (``meta/ijbc_face_tid_mid.txt``,
``meta/ijbc_template_pair_label.txt``: 469,375 images, 23,124 templates, 19,557 genuine and 15,638,932
impostor template pairs) together with per-image embeddings as a reproduce cache would hold them (a float32
[N, 1024] ``.npy`` on disk: flip-concatenated) and per-image qualities of two methods. A fresh process then runs
what ``reproduce`` runs after the models: load the meta files, aggregate templates (media means, summed,
normalised; read from disk in chunks), template qualities (min), 15.6 M comparison scores, pair qualities and
the EDC/pAUC at FMR 1e-3 and 1e-4 for each method. Reported: seconds per stage and the peak resident memory
of that process. Images are not decoded and no model runs: embeddings are synthetic.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_table  # noqa: E402


def generate(root: Path, n_images: int, n_templates: int, n_genuine: int, n_impostors: int, dim: int,
             n_subjects: int = 3531, seed: int = 0) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    # every template gets at least one image; media of 1-8 consecutive images inside a template
    template = np.sort(np.r_[np.arange(n_templates), rng.integers(0, n_templates, n_images - n_templates)])
    new_media = np.r_[True, (template[1:] != template[:-1]) | (rng.random(n_images - 1) < 0.3)]
    media = np.cumsum(new_media)
    subject = rng.integers(0, n_subjects, n_templates)
    tids = np.arange(1, n_templates + 1)
    pd.DataFrame({"img": [f"{i}.jpg" for i in range(1, n_images + 1)], "t": tids[template], "m": media}).to_csv(
        meta / "ijbc_face_tid_mid.txt", sep=" ", header=False, index=False)
    by_subject = pd.Series(np.arange(n_templates)).groupby(subject).apply(list)
    multi = [v for v in by_subject if len(v) > 1]
    gen = []
    while len(gen) < n_genuine:
        g = multi[rng.integers(len(multi))]
        a, b = rng.choice(g, 2, replace=False)
        gen.append((a, b))
    gen = np.asarray(gen)
    imp_a = rng.integers(0, n_templates, n_impostors)
    imp_b = rng.integers(0, n_templates, n_impostors)
    same = subject[imp_a] == subject[imp_b]
    imp_b[same] = (imp_b[same] + 1) % n_templates
    same = subject[imp_a] == subject[imp_b]
    imp_a, imp_b = imp_a[~same], imp_b[~same]
    pairs = pd.DataFrame({"a": np.r_[tids[gen[:, 0]], tids[imp_a]], "b": np.r_[tids[gen[:, 1]], tids[imp_b]],
                          "l": np.r_[np.ones(len(gen), np.int8), np.zeros(len(imp_a), np.int8)]})
    pairs.to_csv(meta / "ijbc_template_pair_label.txt", sep=" ", header=False, index=False, chunksize=1 << 20)
    # embeddings: a subject direction + image noise, two L2-normalised halves (flip concatenation)
    centres = rng.normal(size=(n_subjects, dim // 2)).astype(np.float32)
    quality = rng.random(n_images)
    emb = np.lib.format.open_memmap(root / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n_images, dim))
    for s in range(0, n_images, 1 << 16):
        sl = slice(s, s + (1 << 16))
        subj = subject[template[sl]]
        noise = (2.0 + 20 * (1 - quality[sl]) ** 2)[:, None]
        halves = [centres[subj] + noise * rng.normal(size=(len(subj), dim // 2)).astype(np.float32) for _ in range(2)]
        emb[sl] = np.concatenate([h / np.linalg.norm(h, axis=1, keepdims=True) for h in halves], axis=1)
    emb.flush()
    del emb
    np.save(root / "quality_a.npy", quality + rng.normal(0, 0.2, n_images))  # informative
    np.save(root / "quality_b.npy", rng.random(n_images))  # random
    (root / "done").write_text("ok")


def evaluate_stage(root: Path) -> dict:
    """Runs in a fresh process: the measured part."""
    from vitfiqa.eval import evaluate, load_ijbc, template_quality
    from vitfiqa.eval.reproduction import benchmark_comparison_scores

    times = {}
    t = time.perf_counter()
    ds = load_ijbc(root, align=False)
    times["load meta files"] = time.perf_counter() - t
    t = time.perf_counter()
    feats = np.load(root / "embeddings.npy", mmap_mode="r")
    valid = np.ones(len(ds), bool)
    sims = benchmark_comparison_scores(feats, ds, False, valid)
    times["template aggregation + comparison scores"] = time.perf_counter() - t
    t = time.perf_counter()
    q = {m: template_quality(np.load(root / f"quality_{m}.npy"), ds.templates.template) for m in ("a", "b")}
    times["template qualities"] = time.perf_counter() - t
    t = time.perf_counter()
    df = evaluate(q, sims, ds.pairs, benchmark="IJB-C", fr_model="synthetic", fmrs=(1e-3, 1e-4))
    times["EDC + pAUC (2 methods x 2 FMRs)"] = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(times=times, peak_mb=peak, images=len(ds), templates=len(ds.templates.ids), pairs=len(ds.pairs),
                genuine=ds.pairs.n_genuine, pauc=df[["method", "fmr", "pauc_x1e3"]].values.tolist())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/vitfiqa-ijbc-scale")
    ap.add_argument("--images", type=int, default=469_375)
    ap.add_argument("--templates", type=int, default=23_124)
    ap.add_argument("--genuine", type=int, default=19_557)
    ap.add_argument("--impostors", type=int, default=15_638_932)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--evaluate-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "reproduce_ijbc_scale.md"))
    args = ap.parse_args(argv)
    root = Path(args.dir)
    if args.evaluate_only:
        print(json.dumps(evaluate_stage(root)))
        return
    if not (root / "done").is_file():
        t = time.perf_counter()
        generate(root, args.images, args.templates, args.genuine, args.impostors, args.dim)
        print(f"generated {root} in {time.perf_counter() - t:.0f} s", flush=True)
    run = subprocess.run([sys.executable, os.path.abspath(__file__), "--dir", str(root), "--evaluate-only"],
                         capture_output=True, text=True, check=True)
    res = json.loads(run.stdout.strip().splitlines()[-1])
    rows = [[stage, f"{sec:.1f}"] for stage, sec in res["times"].items()]
    rows.append(["total", f"{sum(res['times'].values()):.1f}"])
    emb_mb = res["images"] * args.dim * 4 / 2**20
    text = write_table(
        args.out, f"reproduce evaluation at IJB-C scale: {res['images']:,} images, {res['templates']:,} templates, "
                  f"{res['pairs']:,} pairs ({res['genuine']:,} genuine)",
        ["stage", "seconds"], rows,
        [f"Peak resident memory of the evaluating process: **{res['peak_mb']:.0f} MB** (embeddings on disk: "
         f"{emb_mb:.0f} MB float32, read in chunks of 8,192 rows).",
         "pAUC x1e3 (synthetic): " + ", ".join(f"{m}@{f:g}={v:.2f}" for m, f, v in res["pauc"]) + ".",
         f"Machine: {machine()}."])
    print(text)


if __name__ == "__main__":
    main()
