"""EDC variant "crfiqa" (the CR-FIQA ERC code's conventions) against a plain implementation written here from
the documented rules, hand-computed cases for each convention in which it differs from "refit", and the
warning for FMR targets the impostor count cannot resolve (all variants)."""
import warnings

import numpy as np
import pytest

from vitfiqa.eval import Pairs, edc_curve, evaluate, pauc


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
