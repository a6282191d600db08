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

    python benchmarks/reproduce_ijbc_scale.py --reproduce-images 20000 [--dir /tmp/vitfiqa-ijbc-run]

runs the whole of ``vitfiqa reproduce`` instead, models included, with ``ray = "local"``: a synthetic IJB-C in the
release layout with N decodable images (112x112 JPEG faces, pre-aligned as CR-FIQA's prepared IJB-C folder is,
so ``align = false``; templates, media and pairs in IJB-C's proportions: 20.3 images per template, 0.85 genuine
and 676 impostor pairs per template), a small CNN recogniser (flip concatenation) whose embeddings are computed
on Ray into the resumable cache, and a quality row from a score file keyed by CR-FIQA's own paths
(``quality_data/IJBC/images/<n>.jpg``). Reported: seconds per stage (from the run's log), the driver's peak
resident memory and the peak of the summed resident memory of the driver and every process it started (Ray's
GCS, raylet and workers; pages shared between them are counted in each, so it is an upper bound), sampled
every 0.2 s, and the same run resumed (everything cached).
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


def generate_images(root: Path, n_images: int, seed: int = 0) -> None:
    """A synthetic IJB-C of ``n_images`` decodable, pre-aligned faces in the release layout, a CNN recogniser and
    a CR-FIQA-keyed score file (see the module docstring)."""
    import torch
    from PIL import Image
    from torch import nn

    from vitfiqa.eval import synthetic
    from vitfiqa.models import export_torchscript

    rng = np.random.default_rng(seed)
    n_templates = max(2, round(n_images / 20.3))
    n_subjects = max(2, n_templates // 6)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    template = np.sort(np.r_[np.arange(n_templates), rng.integers(0, n_templates, n_images - n_templates)])
    new_media = np.r_[True, (template[1:] != template[:-1]) | (rng.random(n_images - 1) < 0.3)]
    media = np.cumsum(new_media)
    subject = rng.integers(0, n_subjects, n_templates)
    bases = [synthetic._identity_pattern(rng) for _ in range(n_subjects)]
    degrade = rng.random(n_images) ** 2
    for i in range(n_images):
        Image.fromarray(synthetic.face_image(bases[subject[template[i]]], rng, float(degrade[i]))).save(
            root / "loose_crop" / f"{i + 1}.jpg", quality=90)
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text(
        "".join(f"{i + 1}.jpg {template[i] + 1} {media[i]}\n" for i in range(n_images)))
    pairs = set()
    by_subject = {}
    for t, s in enumerate(subject):
        by_subject.setdefault(s, []).append(t)
    multi = [v for v in by_subject.values() if len(v) > 1]
    while len(pairs) < round(0.85 * n_templates) and multi:
        a, b = rng.choice(multi[rng.integers(len(multi))], 2, replace=False)
        pairs.add((int(a), int(b), 1))
    n_imp = round(676 * n_templates)
    a, b = rng.integers(0, n_templates, n_imp), rng.integers(0, n_templates, n_imp)
    keep = subject[a] != subject[b]
    lines = [f"{x + 1} {y + 1} {g}" for x, y, g in sorted(pairs)]
    lines += [f"{x + 1} {y + 1} 0" for x, y in zip(a[keep], b[keep])]
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(lines) + "\n")
    quality = 1 - degrade + rng.normal(0, 0.1, n_images)
    (root / "CRFIQAL_IJBC.txt").write_text(
        "".join(f"quality_data/IJBC/images/{i + 1}.jpg {q:.6f}\n" for i, q in enumerate(quality)))
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(256, 128)).eval()
    export_torchscript(cnn, str(root / "cnn.pt"))
    (root / "done").write_text("ok")


def reproduce_config(root: Path, batch_size: int) -> dict:
    return {"out": str(root / "out"), "fmrs": [1e-3, 1e-4], "batch_size": batch_size, "ray": "local",
            "benchmarks": [{"name": "IJB-C", "type": "ijbc", "root": str(root), "align": False}],
            "recognizers": [{"name": "CNN", "model": str(root / "cnn.pt"), "flip": "concat"}],
            "qualities": [{"name": "CR-FIQA(L) file", "scores": {"IJB-C": str(root / "CRFIQAL_IJBC.txt")}}]}


def reproduce_stage(root: Path, batch_size: int) -> dict:
    """Runs in a fresh process: the whole reproduce run, stages timed from its log."""
    import logging

    from vitfiqa.eval.reproduction import reproduce

    marks = []

    class Mark(logging.Handler):
        def emit(self, record):
            marks.append((time.perf_counter(), record.getMessage()))

    log = logging.getLogger("vitfiqa.reproduce")
    log.setLevel(logging.INFO)
    log.addHandler(Mark())
    t0 = time.perf_counter()
    res = reproduce(reproduce_config(root, batch_size), progress=False)
    total = time.perf_counter() - t0

    def at(prefix):
        return next((t for t, m in marks if prefix in m), None)

    start_emb = at("embeddings CNN on")
    start_eval = at("evaluating CNN")
    stages = {"load benchmark + read score file": (start_emb or t0) - t0,
              "embeddings (Ray)": (start_eval or t0) - (start_emb or t0),
              "evaluation + table": t0 + total - (start_eval or t0)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(times=stages, total=total, peak_mb=peak, skipped=res.skipped,
                pauc=res.frame[["method", "fmr", "pauc_x1e3"]].values.tolist(),
                notes=[m for _, m in marks if "on Ray" in m or "cached" in m])


def _tree_rss_mb(pid: int) -> float:
    """Summed VmRSS of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total / 1024


def run_reproduce(root: Path, batch_size: int) -> dict:
    import threading

    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--dir", str(root), "--batch-size",
                             str(batch_size), "--reproduce-only"], stdout=subprocess.PIPE, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            done.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"reproduce run failed ({proc.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    res["tree_peak_mb"] = peak[0]
    return res


def main_reproduce(args) -> None:
    root = Path(args.dir)
    if not (root / "done").is_file():
        t = time.perf_counter()
        generate_images(root, args.reproduce_images)
        print(f"generated {root} in {time.perf_counter() - t:.0f} s", flush=True)
    import shutil

    shutil.rmtree(root / "out", ignore_errors=True)
    first = run_reproduce(root, args.batch_size)
    again = run_reproduce(root, args.batch_size)  # resumed: everything cached
    from vitfiqa.eval import load_ijbc

    ds = load_ijbc(root, align=False)
    rows = [[stage, f"{first['times'][stage]:.1f}", f"{again['times'][stage]:.1f}"] for stage in first["times"]]
    rows.append(["total", f"{first['total']:.1f}", f"{again['total']:.1f}"])
    rows.append(["peak RSS, driver (MB)", f"{first['peak_mb']:.0f}", f"{again['peak_mb']:.0f}"])
    rows.append(["peak RSS, driver + Ray processes (MB)", f"{first['tree_peak_mb']:.0f}",
                 f"{again['tree_peak_mb']:.0f}"])
    text = write_table(
        args.out_reproduce,
        f"vitfiqa reproduce with ray = \"local\" on a synthetic IJB-C of {len(ds):,} images, "
        f"{len(ds.templates.ids):,} templates, {len(ds.pairs):,} pairs ({ds.pairs.n_genuine:,} genuine)",
        ["stage", "first run (s)", "resumed (s)"], rows,
        [f"Images: 112x112 JPEG, pre-aligned (align = false); recogniser: a 4-layer CNN, flip concatenation "
         f"(256-d); batch size {args.batch_size}; embeddings on a local Ray of this machine's CPUs (one actor "
         "per CPU, torch on 1 thread each); qualities: a score file keyed by CR-FIQA's paths "
         "(quality_data/IJBC/images/<n>.jpg), all matched.",
         "Log notes: " + "; ".join(first["notes"] + again["notes"]) + ".",
         "pAUC x1e3 (synthetic): " + ", ".join(f"{m}@{f:g}={v:.2f}" for m, f, v in first["pauc"]) + ".",
         "The IJB-C 1:1 protocol itself (469,375 images, 15.66 M pairs) is measured from cached embeddings in "
         "reproduce_ijbc_scale.md; the embedding stage grows linearly with the images (decode + forward per "
         "image, results written per batch to a memory-mapped cache, so memory does not grow with N).",
         f"Embedding throughput: {1000 * first['times']['embeddings (Ray)'] / len(ds):.1f} ms per image (Ray start "
         f"included); at that rate IJB-C's 469,375 images take "
         f"{469_375 * first['times']['embeddings (Ray)'] / len(ds) / 3600:.1f} h on this machine, divided by the "
         "number of actors on a cluster (one per CPU pair or GPU).",
         f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f} (shared machine)."])
    print(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/vitfiqa-ijbc-scale")
    ap.add_argument("--images", type=int, default=469_375)
    ap.add_argument("--templates", type=int, default=23_124)
    ap.add_argument("--genuine", type=int, default=19_557)
    ap.add_argument("--impostors", type=int, default=15_638_932)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--evaluate-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reproduce-images", type=int, default=0,
                    help="run the whole reproduce, embeddings on Ray, on a synthetic IJB-C of this many images")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reproduce-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "reproduce_ijbc_scale.md"))
    ap.add_argument("--out-reproduce", default=os.path.join(os.path.dirname(__file__), "results",
                                                            "reproduce_ijbc_scale_ray.md"))
    args = ap.parse_args(argv)
    root = Path(args.dir)
    if args.reproduce_only:
        print(json.dumps(reproduce_stage(root, args.batch_size)))
        return
    if args.reproduce_images:
        if args.dir == ap.get_default("dir"):
            args.dir = "/tmp/vitfiqa-ijbc-run"
        main_reproduce(args)
        return
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
