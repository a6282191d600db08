"""Shared helpers for the benchmark scripts: machine description and robust timing."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}")


MALLOC_TUNING = dict(MALLOC_MMAP_THRESHOLD_=str(32 << 20), MALLOC_TRIM_THRESHOLD_=str(16 << 30),
                     MALLOC_TOP_PAD_=str(512 << 20))
MALLOC_NOTE_TUNED = "MALLOC_MMAP_THRESHOLD_=32MiB, MALLOC_TRIM_THRESHOLD_=16GiB, MALLOC_TOP_PAD_=512MiB"
MALLOC_NOTE_DEFAULT = "default (freed large blocks go back to the OS: page faults on reuse)"


def malloc_tuned(requested: bool, script: str, argv) -> bool:
    """Re-run ``script`` under glibc settings that keep freed memory for reuse (no page-fault storms) when
    ``requested``; glibc reads them only at start-up, hence the exec. Returns whether they are in effect."""
    if requested and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        os.environ.update(MALLOC_TUNING)
        os.execv(sys.executable, [sys.executable, os.path.abspath(script)] + list(argv if argv is not None else sys.argv[1:]))
    return "MALLOC_TRIM_THRESHOLD_" in os.environ


def interleaved_medians(fns: dict, repeats: int, warmup: int = 3) -> dict:
    """Median wall time of each callable, alternating them each round so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def write_table(path: str, title: str, header: list[str], rows: list[list], notes: list[str]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += [""] + notes
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text
