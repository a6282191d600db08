"""EDC / pAUC (vitfiqa.eval.edc): hand-computed cases, agreement with straightforward loops, properties; the
"crfiqa" variant (the CR-FIQA ERC code's conventions) against a plain implementation of the documented rules;
the warning for FMR targets the impostor count cannot resolve."""
import warnings

import numpy as np
import pytest

from vitfiqa.eval import Pairs, comparison_scores, edc_curve, evaluate, fnmr_at_fmr, pauc, threshold_at_fmr

GEN_S = [0.9, 0.8, 0.3, 0.6]
GEN_Q = [0.9, 0.8, 0.1, 0.5]
IMP_S = [0.1, 0.2, 0.7, 0.4, 0.05, 0.35]
IMP_Q = [0.6, 0.7, 0.2, 0.95, 0.3, 0.4]


def test_refit_hand_computed():
    # 0%: threshold 0.7 (FMR 1/6 is closer to 0.2 than 2/6); genuines 0.3, 0.6 rejected -> 2/4.
    # 10%: pair of quality 0.1 (genuine 0.3) dropped -> 1/3. 20%: impostor 0.7 dropped, 5 left, k=1,
    # threshold 0.4 (FMR 0.2) -> 0. 30%: impostor 0.05 dropped, threshold 0.4 (FMR 0.25 vs 0) -> 0.
    c = edc_curve(GEN_S, IMP_S, GEN_Q, IMP_Q, fmr=0.2, variant="refit", discard=[0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(c.fnmr, [0.5, 1 / 3, 0, 0])
    np.testing.assert_allclose(c.thresholds, [0.7, 0.7, 0.4, 0.4])
    np.testing.assert_allclose(c.achieved_fmr, [1 / 6, 1 / 6, 0.2, 0.25])
    assert pauc(c, 0.3) == pytest.approx(0.1 * (0.5 + 1 / 3) / 2 + 0.1 * (1 / 3) / 2)  # 0.058333
    assert pauc(c, 0.3, integration="step") == pytest.approx(0.1 * 0.5 + 0.1 / 3)
    assert pauc(c, 0.3, normalize="limit") == pytest.approx(0.0583333 / 0.3, rel=1e-5)
    assert pauc(c, 0.3, normalize="initial") == pytest.approx(0.0583333 / 0.15, rel=1e-5)
    # limit between grid points: the curve is closed by linear interpolation (FNMR 1/6 at 0.15)
    assert pauc(c, 0.15) == pytest.approx(0.1 * (0.5 + 1 / 3) / 2 + 0.05 * (1 / 3 + 1 / 6) / 2)


def test_iso_hand_computed():
    # Threshold fixed at 0.7; genuine by quality: 0.1 (rejected), 0.5 (rejected), 0.8, 0.9.
    c = edc_curve(GEN_S, IMP_S, GEN_Q, variant="iso", fmr=0.2)
    np.testing.assert_allclose(c.discard, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(c.fnmr, [0.5, 1 / 3, 0, 0])
    assert pauc(c, 0.3) == pytest.approx(0.5 * 0.25 + (1 / 3) * 0.05)  # 0.141667, left-constant steps


def test_iso_ties_discarded_together():
    c = edc_curve([0.3, 0.6, 0.8, 0.9], IMP_S, [0.1, 0.1, 0.5, 0.9], variant="iso", fmr=0.2)
    np.testing.assert_allclose(c.discard, [0, 0.5, 0.75])
    np.testing.assert_allclose(c.fnmr, [0.5, 0, 0])
    assert pauc(c, 0.3) == pytest.approx(0.15)


def test_iso_discard_over_all_pairs():
    c = edc_curve(GEN_S, IMP_S, GEN_Q, IMP_Q, variant="iso", fmr=0.2, discard_over="all")
    # Cuts at genuine qualities 0.1, 0.5, 0.8, 0.9 discard (0+0), (1+3), (2+5), (3+5) of 10 pairs
    # (impostor qualities below each cut: none; 0.2, 0.3, 0.4; those and 0.6, 0.7; the same).
    np.testing.assert_allclose(c.discard, [0, 0.4, 0.7, 0.8])


def test_threshold_and_fnmr_at_fmr():
    assert threshold_at_fmr(np.array(IMP_S), 0.2) == (0.7, pytest.approx(1 / 6))
    assert threshold_at_fmr(np.array([0.5, 0.5, 0.1, 0.2]), 0.4) == (0.5, 0.5)  # ties counted together
    assert fnmr_at_fmr(GEN_S, IMP_S, 0.2) == 0.5


# ---- straightforward loop implementations -------------------------------------------------------



def loop_closest(imp, target):
    best = (np.inf, 0.0)
    best_dist = abs(0.0 - target)
    for t in sorted(set(imp.tolist()), reverse=True):
        f = sum(1 for s in imp if s >= t) / len(imp)
        if abs(f - target) < best_dist:
            best, best_dist = (t, f), abs(f - target)
    return best[0]


def loop_refit(gs, is_, gq, iq, fmr, grid):
    pairs = [(q, i, s, True) for i, (s, q) in enumerate(zip(gs, gq))]
    pairs += [(q, len(gs) + i, s, False) for i, (s, q) in enumerate(zip(is_, iq))]
    pairs.sort(key=lambda p: (p[0], p[1]))
    out = []
    for f in grid:
        kept = pairs[int(np.floor(f * len(pairs) + 1e-9)):]
        imp = np.array([p[2] for p in kept if not p[3]])
        gen = [p[2] for p in kept if p[3]]
        thr = loop_closest(imp, fmr)
        out.append(sum(1 for s in gen if s < thr) / len(gen))
    return np.array(out)


def loop_iso(gs, is_, gq, fmr):
    thr = loop_closest(np.asarray(is_), fmr)
    fr, fn = [], []
    for q in sorted(set(gq)):
        kept = [s for s, qq in zip(gs, gq) if qq >= q]
        fr.append(1 - len(kept) / len(gs))
        fn.append(sum(1 for s in kept if s < thr) / len(kept))
    return np.array(fr), np.array(fn)


def random_data(seed, n_gen=300, n_imp=1500, ties=False):
    rng = np.random.default_rng(seed)
    gq = rng.random(n_gen)
    gs = 0.4 + 0.3 * gq + rng.normal(0, 0.15, n_gen)  # better quality -> higher genuine score
    is_ = rng.normal(0, 0.15, n_imp)
    iq = rng.random(n_imp)
    if ties:
        gq, iq = np.round(gq, 1), np.round(iq, 1)
        is_ = np.round(is_, 2)
    return gs, is_, gq, iq


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fmr", [1e-2, 1e-3])
@pytest.mark.parametrize("top", [None, 7])
def test_refit_matches_loop(seed, ties, fmr, top, monkeypatch):
    from vitfiqa.eval import edc as edc_module

    if top is not None:  # only a few impostor scores pre-sorted: exercises the partial path and fallback
        monkeypatch.setattr(edc_module, "TOP_IMPOSTORS", top)
    gs, is_, gq, iq = random_data(seed, ties=ties)
    grid = np.round(np.arange(0, 0.951, 0.05), 2)
    c = edc_curve(gs, is_, gq, iq, fmr=fmr, variant="refit")
    np.testing.assert_allclose(c.discard, grid)
    np.testing.assert_allclose(c.fnmr, loop_refit(gs, is_, gq, iq, fmr, grid), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_iso_matches_loop(seed, ties):
    gs, is_, gq, iq = random_data(seed, ties=ties)
    c = edc_curve(gs, is_, gq, variant="iso", fmr=1e-2)
    fr, fn = loop_iso(gs, is_, gq, 1e-2)
    np.testing.assert_allclose(c.discard, fr, atol=1e-12)
    np.testing.assert_allclose(c.fnmr, fn, atol=1e-12)


# ---- properties ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["refit", "iso"])
def test_oracle_quality_gives_lowest_pauc(variant):
    gs, is_, gq, iq = random_data(7, 2000, 20000)
    rng = np.random.default_rng(1)
    # All three share the impostor qualities and a uniform genuine-quality distribution, so each discards
    # as many genuine pairs at every fraction; the oracle picks the lowest-scoring genuine pairs.
    oracle_q = (np.argsort(np.argsort(gs)) + 0.5) / len(gs)
    oracle = pauc(edc_curve(gs, is_, oracle_q, iq, fmr=1e-2, variant=variant), 0.3)
    useful = pauc(edc_curve(gs, is_, gq, iq, fmr=1e-2, variant=variant), 0.3)
    rand = pauc(edc_curve(gs, is_, rng.random(len(gs)), iq, fmr=1e-2, variant=variant), 0.3)
    assert oracle < useful < rand


def test_random_quality_gives_flat_curve():
    gs, is_, _, _ = random_data(3, 20000, 20000)
    rng = np.random.default_rng(2)
    c = edc_curve(gs, is_, rng.random(len(gs)), rng.random(len(is_)), fmr=1e-2, variant="refit")
    sel = c.discard <= 0.5
    assert np.abs(c.fnmr[sel] - c.fnmr[0]).max() < 0.35 * c.fnmr[0]
    ci = edc_curve(gs, is_, rng.random(len(gs)), variant="iso", fmr=1e-2)
    assert abs(pauc(ci, 0.3, normalize="initial") - 1) < 0.05


@pytest.mark.parametrize("variant", ["refit", "iso"])
def test_invariant_to_monotone_quality_transforms(variant):
    gs, is_, gq, iq = random_data(5, ties=True)
    base = edc_curve(gs, is_, gq, iq, fmr=1e-2, variant=variant)
    for f in (np.exp, lambda q: 3 * q - 7, lambda q: q ** 3):
        c = edc_curve(gs, is_, f(gq), f(iq), fmr=1e-2, variant=variant)
        np.testing.assert_array_equal(c.fnmr, base.fnmr)
        np.testing.assert_array_equal(c.discard, base.discard)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one genuine"):
        edc_curve([], [0.1], [], [0.2])
    with pytest.raises(ValueError, match="NaN"):
        edc_curve([np.nan], [0.1], [0.5], [0.2])
    with pytest.raises(ValueError, match="qualities"):
        edc_curve([0.5, 0.6], [0.1], [0.5], [0.2])
    with pytest.raises(ValueError, match="impostor_quality"):
        edc_curve([0.5], [0.1], [0.5], variant="refit")
    with pytest.raises(ValueError, match="variant"):
        edc_curve([0.5], [0.1], [0.5], [0.1], variant="x")
    with pytest.raises(ValueError, match="FMR"):
        edc_curve([0.5], [0.1], [0.5], [0.1], fmr=0)
    c = edc_curve(GEN_S, IMP_S, GEN_Q, IMP_Q, fmr=0.2, discard=[0, 0.1])
    with pytest.raises(ValueError, match="ends at"):
        pauc(c, 0.3)


def test_comparison_scores_and_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 5)
    centres = rng.normal(size=(40, 16))
    quality = rng.random(len(ids))
    emb = centres[ids] + rng.normal(size=(len(ids), 16)) * (1.5 - quality)[:, None]
    pairs = Pairs.all_pairs(ids)
    s = comparison_scores(emb, pairs)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(s[:10], np.sum(e[pairs.a[:10]] * e[pairs.b[:10]], 1), rtol=1e-5)
    df = evaluate({"good": quality, "random": rng.random(len(ids))}, s, pairs, benchmark="toy", fr_model="fr",
                  fmrs=(1e-2, 1e-3))
    assert set(df.columns) >= {"method", "benchmark", "fr_model", "fmr", "pauc", "pauc_x1e3", "curve"}
    assert len(df) == 4
    good = df[(df.method == "good") & (df.fmr == 1e-2)].pauc.item()
    rand = df[(df.method == "random") & (df.fmr == 1e-2)].pauc.item()
    assert good < rand
    from vitfiqa.eval import plot_edc, to_latex, to_markdown

    md = to_markdown(df)
    assert "| Method | toy FMR=1e-2 | toy FMR=1e-3 |" in md and "**" in md
    tex = to_latex(df, caption="pAUC x 10^3")
    assert r"\multicolumn{2}{c}{toy}" in tex and r"\textbf{" in tex
    for ext in ("png", "pdf"):
        plot_edc(df, str(tmp_path / f"edc.{ext}"), fmr=1e-2)
        assert (tmp_path / f"edc.{ext}").stat().st_size > 1000


def test_tables_and_legends_use_the_methods_display_names():
    """vitfiqa score columns appear under their papers' names (registered in each method's file) in the Markdown
    and LaTeX tables and the EDC legends; other names and the DataFrame / CSV are left as given."""
    import matplotlib

    matplotlib.use("Agg")
    from vitfiqa.eval import plot_edc, to_csv, to_latex, to_markdown

    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(20), 4)
    emb = rng.normal(size=(20, 8))[ids] + rng.normal(size=(len(ids), 8))
    pairs = Pairs.all_pairs(ids)
    df = evaluate({"exfiqa_FW": rng.random(len(ids)), "attn": rng.random(len(ids)), "mine": rng.random(len(ids))},
                  comparison_scores(emb, pairs), pairs, benchmark="toy", fr_model="fr", fmrs=(1e-1,))
    assert list(df.method) == ["exfiqa_FW", "attn", "mine"]
    rows = [line.split(" | ")[0] for line in to_markdown(df).splitlines()[2:]]
    assert rows == ["| EX-FIQA (FW)", "| ATTN-FIQA", "| mine"]
    tex = to_latex(df)
    assert "EX-FIQA (FW) &" in tex and "ATTN-FIQA &" in tex and "mine &" in tex and "exfiqa" not in tex
    assert "exfiqa_FW" in to_csv(df)
    fig = plot_edc(df, fmr=1e-1)
    labels = [t.get_text().split(" (pAUC")[0] for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["EX-FIQA (FW)", "ATTN-FIQA", "mine", "random rejection"]


# -- the "crfiqa" variant --------------------------------------------------------------------------------------
# EDC variant "crfiqa" (the CR-FIQA ERC code's conventions) against a plain implementation written here from the documented rules, hand-computed cases for each convention in which it differs from "refit", and the warning for FMR targets the impostor count cannot resolve (all variants).

def plain_crfiqa(scores, genuine, quality, fmr):
    """The documented rules, the slow obvious way: rank pairs with np.argsort(quality); at each fraction u of
    np.arange(0, 0.98, 0.05) drop the first int(u * n); candidate thresholds = every distinct kept score,
    ascending; FMR(t) = kept impostors >= t / kept impostors; take the first t with the smallest |FMR - target|;
    FNMR = 1 - (kept genuine > t) / kept genuine."""
    scores, genuine = np.asarray(scores, dtype=np.float64), np.asarray(genuine, dtype=bool)
    order = np.argsort(np.asarray(quality, dtype=np.float64))
    fnmr, thresholds = [], []
    for u in np.arange(0, 0.98, 0.05):
        kept = order[int(u * len(scores)):]
        s, g = scores[kept], genuine[kept]
        gen, imp = s[g], s[~g]
        if len(gen) == 0 or len(imp) == 0:
            break
        candidates = np.unique(s)
        fmrs = np.array([np.count_nonzero(imp >= t) / len(imp) for t in candidates])
        t = candidates[int(np.argmin(np.abs(fmrs - fmr)))]
        thresholds.append(t)
        fnmr.append(1 - np.count_nonzero(gen > t) / len(gen))
    return np.array(fnmr), np.array(thresholds)


def protocol_data(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 500))
    genuine = rng.random(n) < rng.uniform(0.05, 0.5)
    genuine[:2] = [True, False]
    scores = np.where(genuine, rng.normal(0.6, 0.2, n), rng.normal(0.2, 0.2, n))
    quality = rng.random(n)
    if ties:
        scores, quality = np.round(scores, 1), np.round(quality, 1)
    return scores, genuine, quality


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_crfiqa_matches_plain_rules(seed, ties):
    scores, genuine, quality = protocol_data(seed, ties)
    for fmr in (0.3, 0.1, 1e-2, 1e-3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sets: low targets are unresolved (tested below)
            c = edc_curve(pairs=(scores, genuine, quality), fmr=fmr, variant="crfiqa")
        fnmr, thr = plain_crfiqa(scores, genuine, quality, fmr)
        np.testing.assert_array_equal(c.fnmr, fnmr)  # bit for bit, not approximately
        np.testing.assert_array_equal(c.thresholds, thr)
        np.testing.assert_array_equal(c.discard, np.arange(0, 0.98, 0.05)[:len(fnmr)])


def test_crfiqa_from_split_arrays_is_genuine_pairs_first():
    scores, genuine, quality = protocol_data(3, ties=True)
    order = np.r_[np.flatnonzero(genuine), np.flatnonzero(~genuine)]
    split = edc_curve(scores[genuine], scores[~genuine], quality[genuine], quality[~genuine], fmr=0.1,
                      variant="crfiqa")
    ordered = edc_curve(pairs=(scores[order], genuine[order], quality[order]), fmr=0.1, variant="crfiqa")
    np.testing.assert_array_equal(split.fnmr, ordered.fnmr)


def test_crfiqa_conventions_hand_computed():
    # FMR points 0.25 (t = 0.65 or 0.7) and 0.5 (t = 0.5 or 0.6) are equally far from 0.375: crfiqa takes the
    # lowest threshold among all scores, the genuine score 0.5 (FMR 0.5), and the genuine 0.5 equal to it is a
    # non-match -> FNMR 1/3. refit takes an impostor score, the higher one on the tie (0.7) -> FNMR 2/3.
    gen, imp = [0.9, 0.65, 0.5], [0.7, 0.6, 0.4, 0.3]
    q_gen, q_imp = [0.5] * 3, [0.5] * 4
    c = edc_curve(gen, imp, q_gen, q_imp, fmr=0.375, variant="crfiqa")
    assert (c.thresholds[0], c.achieved_fmr[0], c.fnmr[0]) == (0.5, 0.5, pytest.approx(1 / 3))
    r = edc_curve(gen, imp, q_gen, q_imp, fmr=0.375, variant="refit")
    assert (r.thresholds[0], r.achieved_fmr[0], r.fnmr[0]) == (0.7, 0.25, pytest.approx(2 / 3))
    # A genuine score equal to the threshold: a non-match in crfiqa, a match in refit.
    c = edc_curve([0.9, 0.7], [0.7, 0.2, 0.1, 0.0], [1, 1], [1] * 4, fmr=0.25, variant="crfiqa")
    r = edc_curve([0.9, 0.7], [0.7, 0.2, 0.1, 0.0], [1, 1], [1] * 4, fmr=0.25, variant="refit")
    assert c.thresholds[0] == r.thresholds[0] == 0.7
    assert (c.fnmr[0], r.fnmr[0]) == (0.5, 0.0)


def test_crfiqa_keeps_protocol_order_within_tied_quality():
    # Ten pairs, the first two of equal lowest quality: an impostor, then a genuine (protocol order). At 10%
    # discard crfiqa drops the impostor (np.argsort keeps this small array in order); refit drops genuine
    # pairs first, the genuine one.
    scores = np.array([0.95, 0.1, 0.9, 0.8, 0.7, 0.3, 0.2, 0.15, 0.05, 0.85])
    genuine = np.array([False, True, True, True, True, False, False, False, False, False])
    quality = np.array([0.1, 0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.3, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the curves stop at 70%: no genuine pair left
        c = edc_curve(pairs=(scores, genuine, quality), fmr=0.2, variant="crfiqa")
        r = edc_curve(pairs=(scores, genuine, quality), fmr=0.2, variant="refit")
    fnmr, _ = plain_crfiqa(scores, genuine, quality, 0.2)
    np.testing.assert_array_equal(c.fnmr, fnmr)
    # 0%: one false match in 6 (FMR 1/6): crfiqa's threshold is the genuine 0.9 (lowest score admitting only
    # the impostor 0.95), refit's the impostor 0.95; no genuine score is above either -> FNMR 1.
    assert (c.thresholds[0], r.thresholds[0], c.fnmr[0], r.fnmr[0]) == (0.9, 0.95, 1.0, 1.0)
    # 10%: crfiqa has dropped the impostor 0.95; 1 of 5 left impostors at FMR 0.2 -> threshold 0.7 (genuine),
    # genuines 0.9, 0.8 accepted, 0.7 (equal) and 0.1 not -> 0.5. refit has dropped the genuine 0.1 instead,
    # the impostor 0.95 stays the threshold -> 1.0.
    assert (c.thresholds[2], c.fnmr[2], r.thresholds[2], r.fnmr[2]) == (0.7, 0.5, 0.95, 1.0)


def test_unresolved_fmr_warns_in_every_variant():
    # 3 impostors cannot resolve FMR 1e-3 (one false match is FMR 0.33).
    gen, imp, qg, qi = [0.9, 0.8, 0.3], [0.5, 0.4, 0.2], [0.5, 0.6, 0.7], [0.5, 0.6, 0.7]
    with pytest.warns(UserWarning, match=r"crfiqa\) on lfw: FMR 0.001 .* 3 impostor comparisons"):
        c = edc_curve(gen, imp, qg, qi, fmr=1e-3, variant="crfiqa", benchmark="lfw")
    assert c.thresholds[0] == 0.8 and c.fnmr[0] == pytest.approx(2 / 3)  # the lowest score above every impostor
    with pytest.warns(UserWarning, match=r"refit\) on lfw: FMR 0.001 .* 3 impostor comparisons.*FNMR 1"):
        r = edc_curve(gen, imp, qg, qi, fmr=1e-3, variant="refit", benchmark="lfw", discard=[0])
    assert r.fnmr[0] == 1.0
    with pytest.warns(UserWarning, match=r"iso\) on lfw: FMR 0.001 .* 3 impostor"):
        edc_curve(gen, imp, qg, fmr=1e-3, variant="iso", benchmark="lfw")


def test_crfiqa_through_evaluate_and_bad_input():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(30), 4)
    pairs = Pairs.all_pairs(ids)
    quality = rng.random(len(ids))
    scores = np.where(pairs.genuine, 0.6, 0.2) + rng.normal(0, 0.2, len(pairs)) * (1.2 - quality[pairs.a])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ~7,000 impostors resolve FMR 1e-2 at every fraction: no warning
        df = evaluate({"q": quality}, scores, pairs, benchmark="toy", fmrs=(1e-2,), variant="crfiqa")
    pq = np.minimum(quality[pairs.a], quality[pairs.b])
    fnmr, _ = plain_crfiqa(scores, pairs.genuine, pq, 1e-2)
    np.testing.assert_array_equal(df.curve.item().fnmr, fnmr)
    assert df.pauc.item() == pytest.approx(pauc(df.curve.item(), 0.3))
    with pytest.raises(ValueError, match="not both"):
        edc_curve([0.5], [0.1], [0.5], [0.1], pairs=([0.5], [True], [0.5]))
    with pytest.raises(ValueError, match="fractions"):
        edc_curve([0.5], [0.1], [0.5], [0.1], variant="crfiqa", discard=[0, 0.1])
    with pytest.raises(ValueError, match="booleans"):
        edc_curve(pairs=([0.5, 0.1], [2, 0], [0.5, 0.1]), variant="crfiqa")
    with pytest.raises(ValueError, match="impostor_quality"):
        edc_curve([0.5], [0.1], [0.5], variant="crfiqa")
