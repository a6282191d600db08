"""EDC + pAUC at IJB-C 1:1 scale: 15,638,932 impostor and 19,557 genuine synthetic comparisons.

    python benchmarks/edc_scale.py [--impostors 15638932] [--genuine 19557]

Reports wall time and peak resident memory of each EDC variant (both FMR targets), in one run.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from vitfiqa.eval import edc_curve, pauc  # noqa: E402

from _common import machine, write_table  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impostors", type=int, default=15_638_932)
    ap.add_argument("--genuine", type=int, default=19_557)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "edc_scale.md"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    base = peak_mb()
    # float32 like real score files: 15.6 M impostors are 62 MB per array.
    gq = rng.random(args.genuine, dtype=np.float32)
    gs = (0.5 + 0.3 * gq + rng.normal(0, 0.15, args.genuine)).astype(np.float32)
    is_ = rng.normal(0, 0.1, args.impostors).astype(np.float32)
    iq = rng.random(args.impostors, dtype=np.float32)
    data_mb = peak_mb() - base
    rows = []
    for variant in ("refit", "iso"):
        for fmr in (1e-3, 1e-4):
            t0 = time.perf_counter()
            c = edc_curve(gs, is_, gq, iq, fmr=fmr, variant=variant)
            area = pauc(c, 0.3)
            dt = time.perf_counter() - t0
            rows.append([variant, f"{fmr:g}", f"{dt:.2f}", f"{area * 1e3:.2f}", f"{peak_mb() - base:.0f}"])
            print(rows[-1], flush=True)
    text = write_table(args.out, f"EDC at IJB-C scale: {args.impostors:,} impostor + {args.genuine:,} genuine pairs",
                       ["variant", "FMR", "seconds (curve + pAUC)", "pAUC x1e3", "peak RSS above start, MB"], rows,
                       [f"Machine: {machine()}.", f"Input arrays (float32) account for {data_mb:.0f} MB of the peak.",
                        "Peak RSS is cumulative over the run (the largest of all rows so far)."])
    print(text)


if __name__ == "__main__":
    main()
