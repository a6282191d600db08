"""Error-versus-Discard Characteristic (EDC), its partial area (pAUC) and FNMR at a fixed FMR.

Comparison scores are similarities (higher = more alike). Quality is higher-is-better; the lowest-quality
pairs are discarded first. Three variants; where they differ:

``variant="crfiqa"`` -- the CR-FIQA ERC evaluation code (``ERC/erc.py`` + ``ERC/roc.py``), point for point
    - pairs: in protocol order (``pairs=(scores, genuine, quality)``); from split arrays the order is all
      genuine pairs, then all impostor pairs.
    - discard: the pairs are ranked by ``np.argsort(pair_quality)`` (numpy's default sort, exactly the
      call the CR-FIQA code makes: tied qualities stay in the order that sort leaves them, which is not
      guaranteed to be protocol order for large arrays); at every fraction u of ``np.arange(0, 0.98, 0.05)``
      the first ``int(u * n_pairs)`` ranked pairs are dropped (genuine and impostor alike).
    - threshold: re-fit at every fraction on the kept pairs, chosen among ALL kept scores (genuine and
      impostor): FMR(t) = kept impostors with score >= t / kept impostors, and the LOWEST t whose
      |FMR(t) - target| is smallest (``np.argmin`` over ascending thresholds). So on an exact tie between
      two FMR points the higher FMR wins, and when no impostor count reaches the target (target x
      impostors < 0.5) the threshold is the lowest score above every impostor (FMR 0; a real FNMR, not 1).
    - FNMR: kept genuine pairs with score <= t are non-matches (a genuine score EQUAL to the threshold is
      a non-match, although an impostor equal to it counted as a match for the FMR);
      ``fnmr = 1 - accepted / genuine`` as the code computes it.
    - pAUC: trapezoid (``sklearn.metrics.auc``) over the fractions.

``variant="refit"`` -- CR-FIQA style, vitfiqa's own conventions
    - discard: fractions 0, 0.05, ..., 0.95 of ALL pairs by pair quality, ``floor(f * n_pairs)`` pairs,
      ties broken by pair order with every genuine pair before any impostor.
    - threshold: re-fit on the kept impostors only: +inf (FMR 0) or a kept impostor score, the one whose
      FMR is closest to the target; on a tie in distance the HIGHER threshold (lower FMR) wins
      (:func:`threshold_at_fmr`). Target x impostors < 0.5 gives +inf and FNMR 1 (warned).
    - FNMR: genuine pairs with score < t are non-matches (equal to t is a match, as for impostors).
    - pAUC: trapezoid.

``variant="iso"`` -- ISO/IEC 29794-1 (Schlett et al.)
    - threshold: fixed once at 0% discard on all impostors (as ``refit``'s rule, warned likewise).
    - discard: genuine pairs by quality, tied qualities discarded together (one point per distinct
      quality); the fraction counts genuine pairs (``discard_over="all"``: all pairs).
    - FNMR: of the remaining genuine pairs, score < t; stepwise (left-constant) curve and pAUC.

Whenever the FMR target is below what the (kept) impostor count resolves (target x impostors < 0.5), a
warning names the benchmark (``benchmark=``), the FMR and the impostor count. All work is sorting plus
cumulative sums or partitions (O(P log P)): IJB-C's 15.6 M impostor pairs take seconds.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

VARIANTS = ("crfiqa", "refit", "iso")  # the EDC variants edc_curve computes
REFIT_GRID = np.round(np.arange(0.0, 0.951, 0.05), 2)


@dataclass
class EDCCurve:
    """Discard fractions and the FNMR at each; ``thresholds`` are the acceptance thresholds used."""

    discard: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray
    fmr_target: float
    variant: str
    achieved_fmr: np.ndarray = field(default_factory=lambda: np.empty(0))

    def pauc(self, limit: float = 0.3, integration: str | None = None, normalize: str | None = None) -> float:
        return pauc(self, limit=limit, integration=integration, normalize=normalize)


def _as_1d(x, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    a = a.astype(dtype, copy=False)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def pair_quality(quality_a, quality_b, reduce: str = "min") -> np.ndarray:
    """Quality of a comparison from its two images' qualities: ``min`` (the papers'), ``mean`` or ``product``."""
    a, b = np.asarray(quality_a, dtype=np.float64), np.asarray(quality_b, dtype=np.float64)
    if reduce == "min":
        return np.minimum(a, b)
    if reduce == "mean":
        return (a + b) / 2
    if reduce == "product":
        return a * b
    raise ValueError(f"unknown pair-quality reduction {reduce!r} (min, mean, product)")


def threshold_at_fmr(impostor_scores: np.ndarray, fmr: float, presorted_desc: bool = False) -> tuple[float, float]:
    """The ROC-point threshold whose FMR is closest to ``fmr`` and the FMR it achieves.

    Candidates are +inf (FMR 0) and every distinct impostor score s (FMR = #impostors >= s / I); on a tie
    in distance the higher threshold wins (as the first point of a ROC walked from the strict end)."""
    imp = impostor_scores if presorted_desc else np.sort(np.asarray(impostor_scores))[::-1]
    n = len(imp)
    if n == 0:
        raise ValueError("no impostor comparisons to set a threshold on")
    if not 0 < fmr < 1:
        raise ValueError(f"FMR target must be in (0, 1), got {fmr}")
    k = int(np.ceil(fmr * n - 1e-9))  # the k-th largest score reaches FMR >= target
    k = min(max(k, 1), n)
    a = imp[k - 1]
    asc = imp[::-1]
    count_ge_a = n - np.searchsorted(asc, a, side="left")
    count_gt_a = n - np.searchsorted(asc, a, side="right")
    b = imp[count_gt_a - 1] if count_gt_a > 0 else np.inf  # next distinct score above a
    fmr_a, fmr_b = count_ge_a / n, count_gt_a / n
    if abs(fmr_b - fmr) <= abs(fmr_a - fmr):
        return float(b), float(fmr_b)
    return float(a), float(fmr_a)


def fnmr_at_fmr(genuine_scores, impostor_scores, fmr: float = 1e-3) -> float:
    """FNMR of the genuine comparisons at the threshold whose FMR is closest to ``fmr``."""
    gen = _as_1d(genuine_scores, "genuine_scores")
    if len(gen) == 0:
        raise ValueError("no genuine comparisons")
    thr, _ = threshold_at_fmr(_as_1d(impostor_scores, "impostor_scores"), fmr)
    return float(np.mean(gen < thr))


def _warn_unresolved(fmr: float, n_imp: int, benchmark: str | None, variant: str, discard: float | None,
                     outcome: str) -> None:
    where = f" on {benchmark}" if benchmark else ""
    at = f" from discard {discard:g} on" if discard else ""
    warnings.warn(f"EDC ({variant}){where}: FMR {fmr:g} is below what {n_imp} impostor comparisons resolve"
                  f"{at} (one false match is FMR {1 / n_imp:.3g}); {outcome}", stacklevel=4)


CRFIQA_GRID = np.arange(0, 0.98, 0.05)  # the CR-FIQA code's fractions, floating noise included


def _crfiqa_curve(scores, genuine, quality, fmr, benchmark):
    """The CR-FIQA ERC code's curve, from the rules in the module docstring, without its O(P log P) sort of
    every kept score per fraction: only the few impostor scores around the target FMR are located."""
    n = len(scores)
    order = np.argsort(np.asarray(quality, dtype=np.float64))  # the CR-FIQA call, same sort kind
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    fnmrs, thrs, fmrs, fracs = [], [], [], []
    warned = False
    for u in CRFIQA_GRID:
        keep = rank >= int(u * n)
        imp = scores[keep & ~genuine]
        gen = scores[keep & genuine]
        n_imp, n_gen = len(imp), len(gen)
        if n_imp == 0 or n_gen == 0:
            warnings.warn(f"EDC stops at discard {u:.2f}: no {'impostor' if n_imp == 0 else 'genuine'} pair left")
            break
        k, thr = _crfiqa_threshold(gen, imp, fmr)
        if k == 0 and not warned:
            _warn_unresolved(fmr, n_imp, benchmark, "crfiqa", u, "the threshold is the lowest score above every "
                             "impostor (FMR 0), as in the CR-FIQA code")
            warned = True
        accepted = int(np.count_nonzero(gen > thr))
        fnmrs.append(1 - accepted / n_gen)
        thrs.append(float(thr))
        fmrs.append(k / n_imp)
        fracs.append(float(u))
    return EDCCurve(np.asarray(fracs), np.asarray(fnmrs), np.asarray(thrs), fmr, "crfiqa", np.asarray(fmrs))


def _crfiqa_threshold(gen: np.ndarray, imp: np.ndarray, fmr: float) -> tuple[int, float]:
    """(k, t): the lowest candidate threshold t among all scores whose FMR k / I is closest to ``fmr``.

    Achievable counts k are the ends of the tie groups of the impostor scores sorted high to low (t = a
    group's value admits exactly the impostors down to that group), plus 0 when a genuine score lies above
    every impostor. The two achievable counts on either side of the target are compared with the code's own
    float expression |k / I - fmr|; on equality the larger count (the lower threshold) comes first."""
    n_imp = len(imp)
    k0 = min(max(int(np.ceil(fmr * n_imp)), 1), n_imp)
    while k0 > 1 and (k0 - 1) / n_imp >= fmr:  # smallest k with k / I >= fmr, in floats
        k0 -= 1
    while k0 < n_imp and k0 / n_imp < fmr:
        k0 += 1
    m = min(n_imp, k0 + 1)
    top = -np.sort(np.partition(-imp, m - 1)[:m] if m < n_imp else -imp)  # the m largest, high to low

    def count_ge(v):
        return int(np.count_nonzero(imp >= v))

    def count_gt(v):
        return int(np.count_nonzero(imp > v))

    candidates = []
    if k0 / n_imp >= fmr:
        candidates.append(count_ge(top[k0 - 1]))  # the end of k0's tie group: smallest achievable >= k0
    k1 = k0 if k0 / n_imp <= fmr else k0 - 1      # largest k with k / I <= fmr
    if k1 >= 1:
        a = top[k1 - 1]
        lo = count_ge(a)
        candidates.append(lo if lo <= k1 else count_gt(a))
    else:
        candidates.append(0)
    achievable = []
    for k in candidates:
        if k == 0 and not (gen.max() > top[0]):
            continue  # FMR 0 needs a score above every impostor: only a genuine one can be
        achievable.append(k)
    best = min(achievable, key=lambda k: (abs(k / n_imp - fmr), -k))
    # The lowest candidate admitting exactly `best` impostors: the lowest score above the next impostor.
    if best == n_imp:
        return best, float(min(imp.min(), gen.min()))
    below = top[best] if best < m else -np.sort(np.partition(-imp, best)[:best + 1])[best]
    above = np.concatenate([gen[gen > below], imp[imp > below]])
    return best, float(above.min())


TOP_IMPOSTORS = 1 << 20  # impostor scores sorted up front; the threshold lives at the top of them


def _refit_curve(gen_s, imp_s, gen_q, imp_q, fmr, discard, benchmark=None, top=None):
    n_gen, n_imp = len(gen_s), len(imp_s)
    total = n_gen + n_imp
    # Pairs are ranked by (quality, pair order with genuine pairs first); a fraction f keeps ranks >=
    # floor(f * total). One partition yields every fraction's cut value instead of a full sort.
    quality = np.concatenate([gen_q, imp_q.astype(np.result_type(gen_q, imp_q), copy=False)])
    n_drops = [int(np.floor(f * total + 1e-9)) for f in discard]
    kth = sorted({n - 1 for n in n_drops if n > 0})
    part = np.partition(quality, kth) if kth else quality
    cuts = {}
    for n_drop in set(n_drops):
        if n_drop == 0:
            cuts[n_drop] = (-np.inf, 0)
            continue
        c = part[n_drop - 1]
        below = int(np.count_nonzero(quality < c))
        equal = np.flatnonzero(quality == c)  # in pair order
        m = n_drop - below  # pairs of quality c that are dropped: the first m in pair order
        cuts[n_drop] = (c, int(equal[m]) if m < len(equal) else total)
    del part

    # Impostor scores, highest first: only the top `top` are sorted unless a fraction needs more.
    top = TOP_IMPOSTORS if top is None else top

    def order_desc(m):
        if m >= n_imp:
            return np.argsort(-imp_s, kind="stable")
        idx = np.argpartition(-imp_s, m - 1)[:m]
        return idx[np.argsort(-imp_s[idx], kind="stable")]

    def prepared(m):
        order = order_desc(m)
        desc = imp_s[order]
        return desc, -desc, imp_q[order], order + n_gen, m >= n_imp

    state = prepared(min(top, n_imp))
    gen_idx = np.arange(n_gen)
    fnmrs, thrs, fmrs, kept_fracs = [], [], [], []
    warned = False
    for f, n_drop in zip(discard, n_drops):
        c, t = cuts[n_drop]
        g_mask = (gen_q > c) | ((gen_q == c) & (gen_idx >= t))
        g_kept = int(g_mask.sum())
        i_kept = n_imp - (n_drop - (n_gen - g_kept))
        if i_kept == 0 or g_kept == 0:
            warnings.warn(f"EDC stops at discard {f}: no {'impostor' if i_kept == 0 else 'genuine'} pair left")
            break
        k = min(max(int(np.ceil(fmr * i_kept - 1e-9)), 1), i_kept)
        while True:
            desc, neg_asc, q_desc, pair_desc, complete = state
            kept = (q_desc > c) | ((q_desc == c) & (pair_desc >= t))
            kept_cum = np.cumsum(kept)
            if kept_cum[-1] >= k:
                pos_a = int(np.searchsorted(kept_cum, k, side="left"))  # the k-th kept impostor
                a = desc[pos_a]
                j_right = int(np.searchsorted(neg_asc, -a, side="right"))
                if complete or j_right < len(desc):  # the whole tie group of a is in view
                    break
            state = prepared(n_imp)  # rare: fall back to sorting every impostor score
        j_left = int(np.searchsorted(neg_asc, -a, side="left"))
        ge = int(kept_cum[j_right - 1])  # kept impostors scoring >= a
        gt = int(kept_cum[j_left - 1]) if j_left > 0 else 0  # ... and > a
        b = desc[int(np.searchsorted(kept_cum[:j_left], gt, side="left"))] if gt > 0 else np.inf
        fmr_a, fmr_b = ge / i_kept, gt / i_kept
        thr, achieved = (b, fmr_b) if abs(fmr_b - fmr) <= abs(fmr_a - fmr) else (a, fmr_a)
        if np.isinf(thr) and not warned:
            _warn_unresolved(fmr, i_kept, benchmark, "refit", f, "the closest ROC point is FMR 0: threshold +inf, "
                             "FNMR 1 (variant='crfiqa' takes the lowest score above every impostor instead)")
            warned = True
        fnmrs.append(float(np.count_nonzero(gen_s[g_mask] < thr)) / g_kept)
        thrs.append(float(thr))
        fmrs.append(achieved)
        kept_fracs.append(f)
    return EDCCurve(np.asarray(kept_fracs, dtype=np.float64), np.asarray(fnmrs), np.asarray(thrs), fmr, "refit",
                    np.asarray(fmrs))


def _iso_curve(gen_s, imp_s, gen_q, imp_q, fmr, discard_over, benchmark=None):
    thr, achieved = threshold_at_fmr(imp_s, fmr)
    if np.isinf(thr):
        _warn_unresolved(fmr, len(imp_s), benchmark, "iso", None, "the closest ROC point is FMR 0: threshold +inf, "
                         "FNMR 1 at every discard fraction")
    order = np.argsort(gen_q, kind="stable")
    q_sorted = gen_q[order]
    reject_sorted = (gen_s[order] < thr).astype(np.int64)
    # Tie groups of equal quality are discarded together: one curve point per distinct quality.
    group_end = np.flatnonzero(np.r_[q_sorted[1:] != q_sorted[:-1], True]) + 1  # exclusive ends
    discarded = np.r_[0, group_end[:-1]]  # genuine pairs discarded before each point
    cum_reject = np.r_[0, np.cumsum(reject_sorted)]
    n_gen = len(gen_s)
    remaining = n_gen - discarded
    fnmr = (cum_reject[-1] - cum_reject[discarded]) / remaining
    if discard_over == "genuine":
        frac = discarded / n_gen
    elif discard_over == "all":
        # Impostors with quality below a cut are discarded alongside: count them per point.
        imp_sorted = np.sort(imp_q)
        cut = q_sorted[discarded]  # quality of the first kept genuine pair
        imp_discarded = np.searchsorted(imp_sorted, cut, side="left")
        frac = (discarded + imp_discarded) / (n_gen + len(imp_q))
    else:
        raise ValueError("discard_over must be 'genuine' or 'all'")
    return EDCCurve(frac.astype(np.float64), fnmr.astype(np.float64), np.full(len(frac), thr), fmr, "iso",
                    np.full(len(frac), achieved))


def edc_curve(genuine_scores=None, impostor_scores=None, genuine_quality=None, impostor_quality=None,
              fmr: float = 1e-3, variant: str = "refit", discard=None, discard_over: str = "genuine", *,
              pairs=None, benchmark: str | None = None) -> EDCCurve:
    """EDC of one quality measure. ``variant``: ``crfiqa`` (the CR-FIQA ERC code, point for point),
    ``refit`` (CR-FIQA style, vitfiqa's conventions) or ``iso`` (ISO/IEC 29794-1); the module docstring
    lists each variant's conventions and how they differ.

    Comparisons come either split (``genuine_scores``, ``impostor_scores``, ``genuine_quality``,
    ``impostor_quality``) or in protocol order, ``pairs=(scores, genuine, pair_quality)`` (``genuine``:
    True for mated pairs), which ``crfiqa`` needs for the official tie order (split arrays count as all
    genuine pairs, then all impostor pairs). ``discard`` is the fraction grid for ``refit`` (default 0,
    0.05, ..., 0.95); ``crfiqa`` always uses the code's ``np.arange(0, 0.98, 0.05)``. ``impostor_quality``
    is needed by ``refit``/``crfiqa`` and by ``iso`` with ``discard_over="all"``. ``benchmark`` names the
    data set in warnings (an FMR target the impostor count cannot resolve)."""
    same = None
    if pairs is not None:
        if any(a is not None for a in (genuine_scores, impostor_scores, genuine_quality, impostor_quality)):
            raise ValueError("give either pairs=(scores, genuine, quality) or split genuine/impostor arrays, not both")
        try:
            scores, same, quality = pairs
        except (TypeError, ValueError):
            raise ValueError("pairs must be (scores, genuine, pair_quality) in protocol order") from None
        scores = _as_1d(scores, "scores", dtype=np.result_type(np.asarray(scores).dtype, np.float32))
        same = np.asarray(same)
        if same.ndim != 1 or not (same.dtype == bool or np.isin(same, (0, 1)).all()):
            raise ValueError("genuine must be a 1-D array of booleans (or 0/1) marking mated pairs")
        same = same.astype(bool)
        quality = _as_1d(quality, "pair quality")
        if not len(scores) == len(same) == len(quality):
            raise ValueError(f"pairs have {len(scores)} scores, {len(same)} genuine flags and {len(quality)} qualities")
        genuine_scores, impostor_scores = scores[same], scores[~same]
        genuine_quality, impostor_quality = quality[same], quality[~same]
    elif genuine_scores is None or impostor_scores is None or genuine_quality is None:
        raise ValueError("give genuine_scores, impostor_scores and genuine_quality (or pairs=...)")
    gen_s = _as_1d(genuine_scores, "genuine_scores")
    imp_s = _as_1d(impostor_scores, "impostor_scores", dtype=np.result_type(np.asarray(impostor_scores).dtype, np.float32))
    gen_q = _as_1d(genuine_quality, "genuine_quality")
    if len(gen_s) == 0 or len(imp_s) == 0:
        raise ValueError("EDC needs at least one genuine and one impostor comparison")
    if len(gen_q) != len(gen_s):
        raise ValueError(f"{len(gen_q)} genuine qualities for {len(gen_s)} genuine scores")
    if not 0 < fmr < 1:
        raise ValueError(f"FMR target must be in (0, 1), got {fmr}")
    imp_q = None
    if impostor_quality is not None:
        imp_q = _as_1d(impostor_quality, "impostor_quality",
                       dtype=np.result_type(np.asarray(impostor_quality).dtype, np.float32))
        if len(imp_q) != len(imp_s):
            raise ValueError(f"{len(imp_q)} impostor qualities for {len(imp_s)} impostor scores")
    if variant == "crfiqa":
        if imp_q is None:
            raise ValueError("the crfiqa variant discards impostor pairs too: pass impostor_quality")
        if discard is not None:
            raise ValueError("the crfiqa variant uses the CR-FIQA code's fractions np.arange(0, 0.98, 0.05)")
        if same is not None:
            return _crfiqa_curve(np.asarray(scores, dtype=np.float64), same, quality, fmr, benchmark)
        # protocol order unknown: all genuine pairs first, then all impostor pairs
        return _crfiqa_curve(np.concatenate([gen_s, imp_s.astype(np.float64)]),
                             np.r_[np.ones(len(gen_s), bool), np.zeros(len(imp_s), bool)],
                             np.concatenate([gen_q, imp_q.astype(np.float64)]), fmr, benchmark)
    if variant == "refit":
        if imp_q is None:
            raise ValueError("the refit variant discards impostor pairs too: pass impostor_quality")
        grid = REFIT_GRID if discard is None else np.asarray(discard, dtype=np.float64)
        if grid.ndim != 1 or len(grid) == 0 or (grid < 0).any() or (grid >= 1).any() or (np.diff(grid) <= 0).any():
            raise ValueError("discard fractions must be increasing values in [0, 1)")
        return _refit_curve(gen_s, imp_s, gen_q, imp_q, fmr, grid, benchmark)
    if variant == "iso":
        if discard is not None:
            raise ValueError("the iso variant has one point per distinct quality; discard grids are for 'refit'")
        if discard_over == "all" and imp_q is None:
            raise ValueError("discard_over='all' needs impostor_quality")
        return _iso_curve(gen_s, imp_s, gen_q, imp_q, fmr, discard_over, benchmark)
    raise ValueError(f"unknown EDC variant {variant!r} ({', '.join(VARIANTS)})")


def pauc(curve: EDCCurve, limit: float = 0.3, integration: str | None = None, normalize: str | None = None) -> float:
    """Area under the EDC over discard fractions [0, limit].

    integration: ``trapezoid`` (default for ``refit`` and ``crfiqa``, as ``sklearn.metrics.auc`` in the
    CR-FIQA code) or ``step`` (left-constant; default for ``iso``).
    normalize: None, ``limit`` (divide by the limit: mean FNMR over the range) or ``initial`` (divide by
    limit x FNMR at 0% discard: 1.0 means no better than keeping everything). Multiply by 1e3 for the
    papers' tables."""
    if not 0 < limit <= 1:
        raise ValueError(f"pAUC limit must be in (0, 1], got {limit}")
    integration = integration or ("step" if curve.variant == "iso" else "trapezoid")
    x, y = np.asarray(curve.discard, dtype=np.float64), np.asarray(curve.fnmr, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("empty EDC curve")
    if x[0] > 0:
        raise ValueError("the EDC curve must start at 0% discard")
    if integration == "step":
        right = np.minimum(np.r_[x[1:], max(limit, x[-1])], limit)
        width = np.clip(right - x, 0, None)
        area = float(np.sum(y * width))
    elif integration == "trapezoid":
        if x[-1] < limit:
            raise ValueError(f"the EDC curve ends at {x[-1]:.3f} < limit {limit}")
        inside = x <= limit
        xs, ys = x[inside], y[inside]
        if xs[-1] < limit:  # close the range at the limit by linear interpolation
            ys = np.r_[ys, np.interp(limit, x, y)]
            xs = np.r_[xs, limit]
        area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    else:
        raise ValueError(f"unknown integration {integration!r} (trapezoid, step)")
    if normalize is None or normalize == "none":
        return area
    if normalize == "limit":
        return area / limit
    if normalize == "initial":
        if y[0] == 0:
            raise ValueError("FNMR at 0% discard is 0: 'initial' normalisation is undefined")
        return area / (limit * y[0])
    raise ValueError(f"unknown normalisation {normalize!r} (none, limit, initial)")
