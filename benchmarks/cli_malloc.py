"""``vitfiqa score`` with the CLI's glibc malloc settings (vitfiqa.malloc, the default) against glibc's own
defaults (``VITFIQA_MALLOC=default``): wall time and minor page faults of whole CLI runs, interleaved.

    python benchmarks/cli_malloc.py [--size vit_s] [--images 128] [--batch-size 32] [--repeats 5]

Writes benchmarks/results/cli_malloc.md with the machine and the load average during the runs."""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, write_table  # noqa: E402

CONFIGS = {"glibc defaults (VITFIQA_MALLOC=default)": {"VITFIQA_MALLOC": "default"},
           "vitfiqa CLI default (mallopt: keep freed memory)": {}}


def run_once(cmd: list[str], env_extra: dict) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VITFIQA_MALLOC"}
    env.update(env_extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="vit_s", help="face ViT size (vit_t, vit_s, vit_b)")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_malloc.md"))
    args = ap.parse_args(argv)

    import torch

    from vitfiqa.demo import write_sample_photos
    from vitfiqa.models import export_torchscript, face_vit

    work = Path(tempfile.mkdtemp(prefix="vitfiqa-cli-malloc-"))
    try:
        torch.manual_seed(0)
        model = work / "model.pt"
        export_torchscript(face_vit(args.size).eval(), str(model))
        write_sample_photos(work / "photos", args.images)
        vitfiqa = shutil.which("vitfiqa") or os.path.join(os.path.dirname(sys.executable), "vitfiqa")
        times = {k: [] for k in CONFIGS}
        faults = {k: [] for k in CONFIGS}
        loads = [os.getloadavg()[0]]
        last = {}
        for r in range(args.repeats + 1):  # round 0 warms the file cache and is not counted
            for name, env in CONFIGS.items():
                out = work / f"out-{r}-{len(times[name])}-{abs(hash(name))}.csv"
                cmd = [vitfiqa, "-q", "score", "--model", str(model), "--images", str(work / "photos"),
                       "--out", str(out), "--batch-size", str(args.batch_size), "--methods", "attn,vitnt"]
                t, f = run_once(cmd, env)
                last[name] = t
                if r:
                    times[name].append(t)
                    faults[name].append(f)
            loads.append(os.getloadavg()[0])
            print(f"round {r}{' (warm-up)' if not r else ''}: "
                  + ", ".join(f"{k.split(' (')[0]} {last[k]:.1f} s" for k in CONFIGS), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(times[next(iter(CONFIGS))])
    rows = []
    for name in CONFIGS:
        med = statistics.median(times[name])
        rows.append([name, f"{med:.1f}", f"{base / med:.2f}", f"{args.images / med:.1f}",
                     f"{statistics.median(faults[name]) / 1e3:.0f}k",
                     ", ".join(f"{t:.1f}" for t in times[name])])
    notes = [f"Machine: {machine()}.",
             f"Whole `vitfiqa -q score` runs (process start, model load, {args.images} PNG files, ATTN + ViTNT, "
             f"CSV export) on a random-weight {args.size} face ViT (112x112, patch 9), batch {args.batch_size}; "
             f"the two settings alternate in each of {args.repeats} rounds after one warm-up round.",
             f"Load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} (a shared machine: other jobs "
             "ran beside these).",
             "Minor page faults: the whole child process (ru_minflt of RUSAGE_CHILDREN)."]
    text = write_table(args.out, f"vitfiqa score: glibc malloc settings, {args.size}, {args.images} images, "
                                 f"batch {args.batch_size}, cpu",
                       ["malloc settings", "median s / run", "speed-up", "images / s", "minor page faults",
                        "each run, s"], rows, notes)
    print(text)


if __name__ == "__main__":
    main()
