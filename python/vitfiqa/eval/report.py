"""`evaluate` -> tidy DataFrame, paper-style tables and EDC plots. The Markdown and LaTeX tables and the plot
legends name a vitfiqa method or score column by its paper's name (``exfiqa_FW`` -> ``EX-FIQA (FW)``:
:func:`vitfiqa.config.display_name`, from the core's registry); the DataFrame and the CSV keep the names as
given."""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from ..config import display_name
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


LAYOUTS = ("benchmark", "fmr_blocks")


def _column_label(col, layout: str) -> str:
    if layout == "benchmark":
        b, f = col
        return f"{b} FMR={_fmr_label(f)}"
    b, r = col
    return f"{b} / {r}" if r else str(b)


def _blocks(df, value: str, decimals: int, layout: str):
    """[(block title, pivot table, {(method, column): (text, is_best)})]. ``benchmark``: one block, columns
    (benchmark, FMR). ``fmr_blocks`` (the papers' layout): one block per FMR, columns (benchmark, recognizer).
    The lowest value of each column is marked best (pAUC: lower is better)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if df.empty:
        raise ValueError("no results to tabulate")
    if layout == "benchmark":
        groups = [("", df, ["benchmark", "fmr"])]
    else:
        groups = [(f"FMR={_fmr_label(f)}", df[df.fmr == f], ["benchmark", "fr_model"]) for f in dict.fromkeys(df.fmr)]
    methods = list(dict.fromkeys(df.method))
    out = []
    for title, part, cols in groups:
        table = part.pivot_table(index="method", columns=cols, values=value, aggfunc="first", sort=False,
                                 dropna=False).reindex(methods)
        best = table.min(axis=0)
        cells = {}
        for col in table.columns:
            for method in table.index:
                v = table.loc[method, col]
                cells[(method, col)] = ("" if np.isnan(v) else f"{v:.{decimals}f}", bool(v == best[col]))
        out.append((title, table, cells))
    return out


def _fmr_label(fmr: float) -> str:
    exp = int(round(np.log10(fmr)))
    return f"1e{exp}" if np.isclose(10.0 ** exp, fmr) else f"{fmr:g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of text cells: the header row, its separator and one line per row; ends in a newline.
    The one writer of the package's Markdown tables (:func:`to_markdown`, the demo report)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(df, value: str = "pauc_x1e3", decimals: int = 2, layout: str = "benchmark") -> str:
    """Methods x (benchmark, FMR) table like the papers' (lowest per column in bold). ``layout="fmr_blocks"``:
    one table per FMR with (benchmark, recognizer) columns."""
    lines = []
    for title, table, cells in _blocks(df, value, decimals, layout):
        if title:
            lines += [f"**{title}**", ""]
        head = ["Method"] + [_column_label(c, layout) for c in table.columns]
        rows = []
        for method in table.index:
            row = [display_name(str(method))]
            for col in table.columns:
                text, is_best = cells[(method, col)]
                row.append(f"**{text}**" if is_best and text else text)
            rows.append(row)
        lines += markdown_table(head, rows).splitlines()
        if title:
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def to_csv(df, path=None, value: str = "pauc_x1e3", layout: str = "fmr_blocks"):
    """The table as CSV, one row per method and block (``block`` holds e.g. ``FMR=1e-3``), values at full
    precision; returns the text and writes it to ``path`` when given."""
    import pandas as pd

    frames = []
    for title, table, _ in _blocks(df, value, 2, layout):
        t = table.copy()
        t.columns = [_column_label(c, layout) for c in t.columns]
        t.insert(0, "block", title)
        frames.append(t.reset_index())
    text = pd.concat(frames, ignore_index=True).to_csv(index=False)
    if path is not None:
        with open(path, "w") as f:
            f.write(text)
    return text


def to_latex(df, value: str = "pauc_x1e3", decimals: int = 2, caption: str | None = None,
             layout: str = "benchmark") -> str:
    """A booktabs LaTeX table in the papers' layout: benchmarks as column groups with FMRs below them
    (``layout="benchmark"``), or recognizers below them and one row block per FMR (``"fmr_blocks"``)."""
    blocks = _blocks(df, value, decimals, layout)
    columns = list(dict.fromkeys(c for _, t, _ in blocks for c in t.columns))
    benches = list(dict.fromkeys(b for b, _ in columns))
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    out = [r"\begin{table}[t]", r"\centering"]
    if caption:
        out.append(rf"\caption{{{esc(caption)}}}")
    out.append(r"\begin{tabular}{l" + "c" * len(columns) + "}")
    out.append(r"\toprule")
    groups = []
    for b in benches:
        n = sum(1 for bb, _ in columns if bb == b)
        groups.append(rf"\multicolumn{{{n}}}{{c}}{{{esc(b)}}}")
    out.append("Method & " + " & ".join(groups) + r" \\")
    sub = [f"FMR={_fmr_label(x)}" if layout == "benchmark" else esc(x) for _, x in columns]
    out.append(" & " + " & ".join(sub) + r" \\")
    for title, table, cells in blocks:
        out.append(r"\midrule")
        if title:
            out.append(rf"\multicolumn{{{len(columns) + 1}}}{{l}}{{\textit{{{esc(title)}}}}} \\")
        for method in table.index:
            vals = []
            for col in columns:
                text, is_best = cells.get((method, col), ("", False))
                vals.append(rf"\textbf{{{text}}}" if is_best and text else text)
            out.append(esc(display_name(str(method))) + " & " + " & ".join(vals) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def _draw_edc(ax, sel, fmr: float, title: str | None, limit_line: bool = True) -> None:
    for _, row in sel.iterrows():
        c: EDCCurve = row.curve
        style = dict(where="post") if c.variant == "iso" else {}
        plot = ax.step if c.variant == "iso" else ax.plot
        name = display_name(str(row.method))
        if _is_random(name):  # a measured random-rejection row: drawn as the baseline, once
            style.update(color="gray", linestyle="--", linewidth=1)
        plot(c.discard, c.fnmr, label=f"{name} (pAUC {row.pauc_x1e3:.2f}e-3)", **style)
    if not any(_is_random(display_name(str(m))) for m in sel.method):
        base = float(sel.iloc[0].fnmr_at_0)  # expected FNMR of random rejection: the FNMR at 0% discard
        ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="random rejection")
    if limit_line:
        ax.axvline(float(sel.iloc[0].limit), color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("Ratio of discarded comparisons")
    ax.set_ylabel(f"FNMR at FMR={_fmr_label(fmr)}")
    ax.set_xlim(0, 1 if sel.iloc[0].variant == "iso" else 0.95)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"EDC {sel.iloc[0].benchmark} {sel.iloc[0].fr_model}".strip(), fontsize=9)
    ax.legend(fontsize=7)


def _is_random(name: str) -> bool:
    return name.strip().lower().startswith("random")


def _pyplot(path):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_edc(df, path: str | None = None, benchmark: str | None = None, fmr: float | None = None,
             title: str | None = None, limit_line: bool = True, fr_model: str | None = None):
    """EDC curves (one per method) for one benchmark (and recognizer) and FMR, with the random-rejection
    baseline dashed and pAUC in the legend. Saves to ``path`` (PNG or PDF by extension) when given; returns
    the figure."""
    plt = _pyplot(path)
    sel = df
    if benchmark is not None:
        sel = sel[sel.benchmark == benchmark]
    if fr_model is not None:
        sel = sel[sel.fr_model == fr_model]
    if fmr is None and not sel.empty:
        fmr = sel.fmr.iloc[0]
    sel = sel[np.isclose(sel.fmr, fmr)] if fmr is not None else sel
    if sel.empty:
        raise ValueError("no rows to plot for that benchmark / FMR")
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    _draw_edc(ax, sel, fmr, title, limit_line)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def plot_edc_grid(df, paths=(), limit_line: bool = True):
    """A grid of EDC plots: one row per (benchmark, recognizer), one column per FMR. Saved to every path in
    ``paths`` (PNG and/or PDF by extension); returns the figure."""
    plt = _pyplot(paths[0] if paths else None)
    if df.empty:
        raise ValueError("no rows to plot")
    rows = list(dict.fromkeys(zip(df.benchmark, df.fr_model)))
    fmrs = list(dict.fromkeys(df.fmr))
    fig, axes = plt.subplots(len(rows), len(fmrs), figsize=(4.6 * len(fmrs), 3.6 * len(rows)), squeeze=False)
    for i, (bench, rec) in enumerate(rows):
        for j, fmr in enumerate(fmrs):
            sel = df[(df.benchmark == bench) & (df.fr_model == rec) & (df.fmr == fmr)]
            if sel.empty:
                axes[i, j].set_axis_off()
                continue
            _draw_edc(axes[i, j], sel, fmr, f"{bench} / {rec}, FMR={_fmr_label(fmr)}", limit_line)
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=120)
    return fig
