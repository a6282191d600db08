"""`evaluate` -> tidy DataFrame, paper-style tables and EDC plots."""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from .edc import EDCCurve, edc_curve, pair_quality, pauc
from .scores import Pairs


def evaluate(qualities: Mapping[str, np.ndarray], comparison_scores: np.ndarray, pairs: Pairs, benchmark: str = "",
             fr_model: str = "", fmrs: Sequence[float] = (1e-3, 1e-4), variant: str = "refit", limit: float = 0.3,
             pair_reduce: str = "min", integration: str | None = None, normalize: str | None = None):
    """pAUC-EDC of every quality method on one benchmark and comparison (FR) model.

    variant: ``refit``, ``crfiqa`` or ``iso`` (see :mod:`vitfiqa.eval.edc`); pairs are passed in protocol order.
    qualities: method name -> per-image (or per-template) quality, indexed like ``pairs``; NaN marks an
    unreadable image, whose pairs are dropped with a warning. comparison_scores: one similarity per pair.
    Returns a DataFrame with columns method, benchmark, fr_model, fmr, variant, limit, pauc, pauc_x1e3,
    fnmr_at_0, curve (the :class:`EDCCurve`)."""
    import pandas as pd

    scores = np.asarray(comparison_scores)
    if scores.shape != (len(pairs),):
        raise ValueError(f"{scores.shape[0] if scores.ndim else 0} comparison scores for {len(pairs)} pairs")
    if not qualities:
        raise ValueError("no quality methods to evaluate")
    rows = []
    for method, q in qualities.items():
        q = np.asarray(q, dtype=np.float64)
        pairs.check(len(q))
        pq = pair_quality(q[pairs.a], q[pairs.b], pair_reduce)
        valid = np.isfinite(pq) & np.isfinite(scores)
        if not valid.all():
            warnings.warn(f"{method}: {int((~valid).sum())} pairs with unreadable images or NaN scores dropped")
        for fmr in fmrs:
            # Pairs in protocol order (the crfiqa variant's tie order depends on it); unreadable ones dropped.
            curve = edc_curve(pairs=(scores[valid], pairs.genuine[valid], pq[valid]), fmr=fmr, variant=variant,
                              benchmark=benchmark or None)
            area = pauc(curve, limit=limit, integration=integration, normalize=normalize)
            rows.append(dict(method=method, benchmark=benchmark, fr_model=fr_model, fmr=fmr, variant=variant,
                             limit=limit, pauc=area, pauc_x1e3=area * 1e3, fnmr_at_0=float(curve.fnmr[0]),
                             curve=curve))
    return pd.DataFrame(rows)


def _pivot(df, value: str, decimals: int):
    table = df.pivot_table(index="method", columns=["benchmark", "fmr"], values=value, aggfunc="first", sort=False)
    best = table.min(axis=0)
    cells = {}
    for col in table.columns:
        for method in table.index:
            v = table.loc[method, col]
            cells[(method, col)] = ("" if np.isnan(v) else f"{v:.{decimals}f}", bool(v == best[col]))
    return table, cells


def _fmr_label(fmr: float) -> str:
    exp = int(round(np.log10(fmr)))
    return f"1e{exp}" if np.isclose(10.0 ** exp, fmr) else f"{fmr:g}"


def to_markdown(df, value: str = "pauc_x1e3", decimals: int = 2) -> str:
    """Methods x (benchmark, FMR) table like the papers' (lowest per column in bold)."""
    table, cells = _pivot(df, value, decimals)
    head = ["Method"] + [f"{b} FMR={_fmr_label(f)}" for b, f in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in table.index:
        row = [str(method)]
        for col in table.columns:
            text, is_best = cells[(method, col)]
            row.append(f"**{text}**" if is_best and text else text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df, value: str = "pauc_x1e3", decimals: int = 2, caption: str | None = None) -> str:
    """A booktabs LaTeX table in the papers' layout: benchmarks as column groups, FMRs below them."""
    table, cells = _pivot(df, value, decimals)
    benches = list(dict.fromkeys(b for b, _ in table.columns))
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    out = [r"\begin{table}[t]", r"\centering"]
    if caption:
        out.append(rf"\caption{{{esc(caption)}}}")
    out.append(r"\begin{tabular}{l" + "c" * len(table.columns) + "}")
    out.append(r"\toprule")
    groups = []
    for b in benches:
        n = sum(1 for bb, _ in table.columns if bb == b)
        groups.append(rf"\multicolumn{{{n}}}{{c}}{{{esc(b)}}}")
    out.append("Method & " + " & ".join(groups) + r" \\")
    out.append(" & " + " & ".join(f"FMR={_fmr_label(f)}" for _, f in table.columns) + r" \\")
    out.append(r"\midrule")
    for method in table.index:
        vals = []
        for col in table.columns:
            text, is_best = cells[(method, col)]
            vals.append(rf"\textbf{{{text}}}" if is_best and text else text)
        out.append(esc(method) + " & " + " & ".join(vals) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def plot_edc(df, path: str | None = None, benchmark: str | None = None, fmr: float | None = None,
             title: str | None = None, limit_line: bool = True):
    """EDC curves (one per method) for one benchmark and FMR, with the random-rejection baseline dashed
    and pAUC in the legend. Saves to ``path`` (PNG or PDF by extension) when given; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sel = df
    if benchmark is not None:
        sel = sel[sel.benchmark == benchmark]
    if fmr is None:
        fmr = sel.fmr.iloc[0]
    sel = sel[np.isclose(sel.fmr, fmr)]
    if sel.empty:
        raise ValueError("no rows to plot for that benchmark / FMR")
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for _, row in sel.iterrows():
        c: EDCCurve = row.curve
        style = dict(where="post") if c.variant == "iso" else {}
        plot = ax.step if c.variant == "iso" else ax.plot
        plot(c.discard, c.fnmr, label=f"{row.method} (pAUC {row.pauc_x1e3:.2f}e-3)", **style)
    base = float(sel.iloc[0].fnmr_at_0)
    ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="random rejection")
    if limit_line:
        ax.axvline(float(sel.iloc[0].limit), color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("Ratio of discarded comparisons")
    ax.set_ylabel(f"FNMR at FMR={_fmr_label(fmr)}")
    ax.set_xlim(0, 1 if sel.iloc[0].variant == "iso" else 0.95)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    bench = sel.iloc[0].benchmark
    ax.set_title(title or f"EDC {bench} {sel.iloc[0].fr_model}".strip())
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
