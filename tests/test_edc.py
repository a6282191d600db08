"""EDC / pAUC: hand-computed cases, agreement with straightforward loops, properties."""
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
