"""Controlled-degradation study (``vitfiqa demo``): held-out synthetic identities (never seen in training),
each image clean and degraded at a known level by seven degradations (all seven kinds are also applied at
training time, to other identities: :data:`vitfiqa.demo.train.DEGRADATIONS`), scored by all four methods —
ATTN-FIQA and ViTNT-FIQA on the demo recogniser, ViT-FIQA and EX-FIQA on the demo quality model — then:

* Spearman correlation of each score with the degradation level, per method and degradation;
* a verification experiment with the recogniser's embeddings (cosine): clean-pair FNMR at FMR 1e-3, and
  EDC curves / pAUC at FMR 1e-2 and 1e-3 over all images (clean and degraded) with a random-rejection row;
* heatmap overlays (ATTN-FIQA, ViTNT-FIQA) on clean and strongly degraded faces;
* ``summary.json`` with the targets (clean FNMR < 0.3; every method's pAUC <= 0.8 x random at both FMRs)
  and, for a method that misses, the degradations it ranks the wrong way.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from ..loader import load_uint8, to_model_input
from .faces import HELD_OUT, render_faces

# degradation -> parameter at levels 1..4 (level 0 = the clean image)
LEVELS = {
    "blur": [1.0, 2.0, 3.0, 4.5],          # Gaussian sigma, px (112x112 image)
    "noise": [10, 20, 35, 55],             # Gaussian noise std, grey levels
    "lowres": [0.5, 0.33, 0.22, 0.14],     # down-scale factor before up-scaling back
    "occlusion": [0.1, 0.2, 0.3, 0.45],    # fraction of the image covered by a square
    "jpeg": [30, 15, 8, 4],                # JPEG quality
    "overexposure": [1.5, 2.0, 2.7, 3.5],  # gain on [0, 1] intensities, clipped
    "underexposure": [0.55, 0.35, 0.2, 0.1],
}
TARGET_FNMR = 0.3
TARGET_PAUC_RATIO = 0.8
FMRS = (1e-2, 1e-3)
# The score columns the study reports, per model: ATTN-FIQA and ViTNT-FIQA read the recogniser (a plain face
# ViT), ViT-FIQA and EX-FIQA (its depth-weighted fusion FW) the quality model's head. The methods that write
# them and their display names come from the core's registry.
RECOGNIZER_COLUMNS = ("attn", "vitnt")
QUALITY_MODEL_COLUMNS = ("vitfiqa", "exfiqa_FW")


def _methods_for(columns) -> list[str]:
    from ..config import score_columns

    return list(dict.fromkeys(score_columns()[c] for c in columns))


def degrade(image: np.ndarray, kind: str, value: float, rng: np.random.Generator) -> np.ndarray:
    """One uint8 HxWx3 image degraded by ``kind`` at parameter ``value``."""
    from PIL import Image, ImageFilter

    h, w = image.shape[:2]
    if kind == "blur":
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(value)))
    if kind == "noise":
        return np.clip(image + rng.normal(0, value, image.shape), 0, 255).astype(np.uint8)
    if kind == "lowres":
        small = Image.fromarray(image).resize((max(2, round(w * value)), max(2, round(h * value))), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR))
    if kind == "occlusion":
        side = int(round(np.sqrt(value) * h))
        y, x = rng.integers(h // 6, h - side - h // 10), rng.integers(w // 8, w - side - w // 8)
        out = image.copy()
        out[y:y + side, x:x + side] = rng.integers(0, 256, 3)
        return out
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(value))
        return load_uint8(buf.getvalue(), size=None)  # decoded as every image file is (vitfiqa.loader)
    if kind in ("overexposure", "underexposure"):
        return np.clip(image.astype(np.float32) * value, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown degradation {kind!r}")


def build_set(identities: int, samples: int, seed: int = 0):
    """Clean renders of held-out identities plus, for every clean image and degradation, one copy at a random
    level 1..4. Returns images [N,S,S,3] uint8 (S: render_faces' default, the standard face size) and
    per-image identity, sample, degradation, level."""
    ids = np.repeat(np.arange(identities), samples)
    smp = np.tile(np.arange(samples), identities)
    clean = render_faces(ids, smp, namespace=HELD_OUT)
    rng = np.random.default_rng(seed)
    images, meta = [clean], [(i, s, "clean", 0) for i, s in zip(ids, smp)]
    for kind, values in LEVELS.items():
        level = rng.integers(1, len(values) + 1, len(clean))
        images.append(np.stack([degrade(im, kind, values[lv - 1], rng) for im, lv in zip(clean, level)]))
        meta += [(i, s, kind, int(lv)) for i, s, lv in zip(ids, smp, level)]
    return np.concatenate(images), meta


def _why_missed(name: str, corr: dict, fnmr_by_kind: dict) -> str:
    """A data-driven reason for a missed pAUC target: how the score follows the degradations on which the
    recogniser fails most (FNMR of clean-vs-degraded genuine pairs at least 1.5x that of clean pairs)."""
    base = fnmr_by_kind.get("clean", 0.0)
    harmful = sorted((k for k in LEVELS if fnmr_by_kind.get(k, 0.0) >= 1.5 * base),
                     key=lambda k: -fnmr_by_kind[k])
    if not harmful:
        return "the recogniser's errors are not concentrated on any degradation, so no ranking by quality can help much"
    wrong = [f"{k} (Spearman {corr[k][name]:+.2f}, FNMR {fnmr_by_kind[k]:.2f})" for k in harmful if corr[k][name] >= 0.1]
    weak = [f"{k} ({corr[k][name]:+.2f}, FNMR {fnmr_by_kind[k]:.2f})" for k in harmful if -0.3 < corr[k][name] < 0.1]
    parts = []
    if wrong:
        parts.append("its score rises with " + ", ".join(wrong) + ", where the recogniser fails most")
    if weak:
        parts.append("it follows " + ", ".join(weak) + " weakly or not at all")
    if not parts:
        return ("it falls with every degradation that hurts recognition, but not steeply enough to discard those "
                "comparisons before 30% of all are gone")
    return "; ".join(parts) + ", so discarding by it leaves many failing comparisons in"


def run_demo(out_dir: str | Path = "vitfiqa-demo", identities: int = 150, samples: int = 4,
             recognizer: str | Path | None = None, quality_model: str | Path | None = None,
             max_impostors: int = 1_000_000, seed: int = 0, log=print) -> dict:
    import pandas as pd

    import vitfiqa
    from vitfiqa.config import display_name
    from vitfiqa.eval import (Pairs, comparison_scores, evaluate, fnmr_at_fmr, markdown_table, plot_edc,
                              threshold_at_fmr, to_markdown)
    from vitfiqa.viz import heatmap_figure

    from . import QUALITY_MODEL, RECOGNIZER

    if identities < 2 or samples < 2:
        raise ValueError("the demo needs at least 2 identities with at least 2 images each")
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec_path, q_path = Path(recognizer or RECOGNIZER), Path(quality_model or QUALITY_MODEL)
    for p in (rec_path, q_path):
        if not p.is_file():
            raise FileNotFoundError(f"demo model not found: {p} (vitfiqa train-demo makes it)")
    rec, qm = vitfiqa.load(rec_path), vitfiqa.load(q_path)
    log(f"recogniser {rec_path.name}: {rec.num_blocks} blocks, input {rec.image_size}; "
        f"quality model {q_path.name}: {qm.num_blocks} blocks")
    images, meta = build_set(identities, samples, seed)
    frame = pd.DataFrame(meta, columns=["identity", "sample", "degradation", "level"])
    log(f"rendered {identities * samples} held-out faces, {len(images)} images with degradations "
        f"({time.time() - t0:.0f} s)")

    # The uint8 images are normalised once per batch for each model (the loader's to_model_input), then scored
    # and embedded from that one input.
    parts: dict[str, list] = {}
    embedding_parts = []
    for i in range(0, len(images), 256):
        chunk = images[i:i + 256]
        x = to_model_input(chunk, rec)
        for r in (rec.score(x, methods=_methods_for(RECOGNIZER_COLUMNS), preprocess=False),
                  qm.score(to_model_input(chunk, qm), methods=_methods_for(QUALITY_MODEL_COLUMNS), preprocess=False)):
            for k, v in r.numpy().items():
                parts.setdefault(k, []).append(v)
        embedding_parts.append(rec.forward(x, preprocess=False).numpy())
    scores = {k: np.concatenate(v) for k, v in parts.items()}
    embeddings = np.concatenate(embedding_parts)
    methods = {display_name(c): c for c in (*RECOGNIZER_COLUMNS, *QUALITY_MODEL_COLUMNS)}  # label -> column
    for name, key in methods.items():
        frame[name] = scores[key]
    frame.to_csv(out / "scores.csv", index=False)
    log(f"scored with all four methods ({time.time() - t0:.0f} s)")

    # Spearman of each score with the level, over the clean images and one degradation's copies.
    corr = {}
    for kind in LEVELS:
        sel = frame[(frame.degradation == kind) | (frame.degradation == "clean")]
        # Spearman = Pearson on average ranks (ties shared); pandas' method="spearman" would need SciPy.
        ranks = sel[list(methods) + ["level"]].rank()
        corr[kind] = {name: float(ranks[name].corr(ranks["level"])) for name in methods}
    corr_table = pd.DataFrame(corr)
    corr_table.to_csv(out / "spearman.csv")

    # Verification. Genuine: two images of one identity from different renders (a degraded copy of the same
    # render is not a second photo); impostor: different identities (a random subset when there are many).
    n = len(images)
    ident, sample = frame.identity.to_numpy(), frame["sample"].to_numpy()
    a, b = np.triu_indices(n, 1)
    same_id = ident[a] == ident[b]
    genuine = same_id & (sample[a] != sample[b])
    rng = np.random.default_rng(seed + 1)
    imp = np.flatnonzero(~same_id)
    if len(imp) > max_impostors:
        imp = np.sort(rng.choice(imp, max_impostors, replace=False))
    keep = np.concatenate([np.flatnonzero(genuine), imp])
    pairs = Pairs(a[keep], b[keep], genuine[keep])
    sims = comparison_scores(embeddings, pairs)
    # Clean pairs: every pair of clean images (all of their impostor pairs, not the subset above).
    clean = frame.degradation.to_numpy() == "clean"
    ci = np.flatnonzero(clean)
    ca, cb = np.triu_indices(len(ci), 1)
    clean_pairs = Pairs(ci[ca], ci[cb], ident[ci[ca]] == ident[ci[cb]])
    clean_sims = comparison_scores(embeddings, clean_pairs)
    g = clean_pairs.genuine
    clean_fnmr = float(fnmr_at_fmr(clean_sims[g], clean_sims[~g], 1e-3))
    all_fnmr = float(fnmr_at_fmr(sims[pairs.genuine], sims[~pairs.genuine], 1e-3))
    log(f"verification: clean-pair FNMR@FMR1e-3 {clean_fnmr:.3f} ({int(g.sum())} genuine, {int((~g).sum())} "
        f"impostor pairs); all images {all_fnmr:.3f}")

    # Where the recogniser fails: FNMR at the all-image FMR 1e-3 threshold for genuine pairs that include an
    # image of each degradation (level 4 = the strongest).
    thr, _ = threshold_at_fmr(sims[~pairs.genuine], 1e-3)
    kind, lev = frame.degradation.to_numpy(), frame.level.to_numpy()
    gen_a, gen_b, gen_s = pairs.a[pairs.genuine], pairs.b[pairs.genuine], sims[pairs.genuine]
    fnmr_by_kind = {}
    for k in ["clean", *LEVELS]:
        for lv in ((0,) if k == "clean" else (None, 4)):
            both = (kind[gen_a] == k) & (kind[gen_b] == "clean") | (kind[gen_b] == k) & (kind[gen_a] == "clean")
            if lv is not None:
                both &= (lev[gen_a] == lv) | (lev[gen_b] == lv)
            if both.any():
                fnmr_by_kind[k if lv in (None, 0) else f"{k} L4"] = float((gen_s[both] < thr).mean())
    quality = {name: frame[name].to_numpy() for name in methods}
    quality["random rejection"] = rng.random(n)
    df = evaluate(quality, sims, pairs, benchmark="synthetic faces, degraded", fr_model="demo recogniser",
                  fmrs=FMRS)
    df.drop(columns="curve").to_csv(out / "pauc.csv", index=False)
    for fmr in FMRS:
        _close(plot_edc(df, str(out / f"edc_fmr{fmr:g}.png"), fmr=fmr,
                        title=f"EDC, held-out synthetic faces, FMR={fmr:g}"))
    log(f"EDC and pAUC done ({time.time() - t0:.0f} s)")

    # Heatmaps: three identities, clean and at the strongest level of each degradation.
    picks, titles = [], []
    for ident_ in range(3):
        base = int(np.flatnonzero(clean & (ident == ident_) & (sample == 0))[0])
        picks.append(images[base])
        titles.append("clean")
        for kind, values in LEVELS.items():
            picks.append(degrade(images[base], kind, values[-1], np.random.default_rng(ident_)))
            titles.append(f"{kind} L4")
    heatmap_files = {}
    for key in _methods_for(RECOGNIZER_COLUMNS):  # the recogniser's methods draw heatmaps
        r = rec.score(picks, methods=[key], heatmaps=True)
        shown = [f"{t}\n{display_name(key)} {v:.3f}" for t, v in zip(titles, r.scores[key].tolist())]
        heatmap_files[key] = f"heatmaps_{key}.png"
        fig = heatmap_figure(picks, r.heatmaps[key], shown, str(out / heatmap_files[key]), ncols=len(LEVELS) + 1,
                             title=f"{display_name(key)} heatmaps: 3 held-out identities, clean and at level 4 "
                                   f"(the strongest) of each degradation",
                             colorbar="heatmap value (each image's own min..max)", footnote=LEVEL_LEGEND, dpi=80)
        _close(fig)

    # Targets (kept in summary.json for regression checks; the report states the numbers, not pass/fail).
    pauc = {(r.method, r.fmr): float(r.pauc_x1e3) for r in df.itertuples()}
    targets: dict[str, dict] = {"clean_fnmr_at_fmr_1e-3": {"value": round(clean_fnmr, 4), "target": f"< {TARGET_FNMR}",
                                                           "met": clean_fnmr < TARGET_FNMR}}
    reasons = {}
    ratios_by_method = {}
    for name in methods:
        ratios = {f"{fmr:g}": pauc[(name, fmr)] / pauc[("random rejection", fmr)] for fmr in FMRS}
        ratios_by_method[name] = ratios
        met = all(v <= TARGET_PAUC_RATIO for v in ratios.values())
        targets[f"pauc_ratio_to_random/{name}"] = {"value": {k: round(v, 3) for k, v in ratios.items()},
                                                  "target": f"<= {TARGET_PAUC_RATIO} at both FMRs", "met": met}
        if not met:
            reasons[name] = _why_missed(name, corr, fnmr_by_kind)
    summary = dict(
        held_out_identities=identities, images_per_identity=samples, images=n, pairs=len(pairs),
        genuine_pairs=int(pairs.n_genuine), clean_genuine_pairs=int(g.sum()), clean_impostor_pairs=int((~g).sum()),
        clean_fnmr_at_fmr_1e3=round(clean_fnmr, 4),
        all_images_fnmr_at_fmr_1e3=round(all_fnmr, 4),
        fnmr_vs_clean_by_degradation={k: round(v, 3) for k, v in fnmr_by_kind.items()},
        spearman={f"{m}/{k}": round(corr[k][m], 3) for k in LEVELS for m in methods},
        pauc_x1e3={f"{m}@FMR={f:g}": round(v, 2) for (m, f), v in pauc.items()},
        targets=targets, misses=reasons, seconds=round(time.time() - t0, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    blocks = _report_blocks(identities, samples, n, pairs, clean_fnmr, all_fnmr, fnmr_by_kind, corr_table, df,
                            ratios_by_method, reasons, heatmap_files, g, rec.num_blocks)
    (out / "report.md").write_text(_markdown(blocks, out))
    (out / "report.html").write_text(_html(blocks, out))
    log(_markdown([b for b in blocks if b[0] != "figure"], out))
    log(f"report written to {out}/report.html (self-contained) and report.md in {time.time() - t0:.1f} s")
    return summary


LEVEL_LEGEND = ("clean: the render as made. L4 = level 4 of 4, the strongest: blur Gaussian sigma 4.5 px; noise "
                "Gaussian sigma 55 grey levels;\nlowres down-scaled to 0.14x and back; occlusion a square over 45% "
                "of the image; jpeg quality 4; overexposure gain 3.5; underexposure gain 0.1 (clipped). "
                "Under each label: that image's score.")
"""What "L4" and the other labels of the heatmap grids mean (checked against LEVELS by the tests)."""


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _level_table() -> tuple[list[str], list[list[str]]]:
    units = {"blur": "Gaussian sigma, px", "noise": "Gaussian noise sigma, grey levels",
             "lowres": "down-scale factor (then back up)", "occlusion": "share of the image covered by a square",
             "jpeg": "JPEG quality", "overexposure": "gain on intensities (clipped)",
             "underexposure": "gain on intensities"}
    return (["degradation", "parameter", "L1", "L2", "L3", "L4"],
            [[k, units[k], *(f"{v:g}" for v in vals)] for k, vals in LEVELS.items()])


def _report_blocks(identities, samples, n, pairs, clean_fnmr, all_fnmr, fnmr_by_kind, corr_table, df,
                   ratios_by_method, reasons, heatmap_files, clean_genuine, rec_blocks) -> list[tuple]:
    """The report as a list of blocks (heading, paragraph, table, figure), rendered to Markdown and HTML."""
    from vitfiqa.config import display_name
    from vitfiqa.eval import to_markdown

    impostors = len(pairs) - int(pairs.n_genuine)
    better = [m for m, r in ratios_by_method.items() if all(v < 0.95 for v in r.values())]
    not_better = [m for m in ratios_by_method if m not in better]
    best = min(ratios_by_method, key=lambda m: max(ratios_by_method[m].values()))
    ratio_text = "; ".join(f"{m} {', '.join(f'{v:.2f}' for v in r.values())}" for m, r in ratios_by_method.items())
    worst_kinds = sorted((k for k in LEVELS if k in fnmr_by_kind), key=lambda k: -fnmr_by_kind[k])[:3]
    blocks: list[tuple] = [
        ("h1", "vitfiqa demo report"),
        ("p", f"A controlled-degradation study of the four quality methods on the embedded stand-in models. "
              f"{identities} held-out synthetic identities (never seen in training) x {samples} renders, each "
              f"clean and degraded once by each of {len(LEVELS)} degradations at a random level 1-4: {n} images. "
              "The recogniser and the quality model were trained on other identities with every degradation "
              "below applied to part of each training batch, so none is unseen; what this study holds out is the "
              "identities. ATTN-FIQA and ViTNT-FIQA read the recogniser (a small face ViT); ViT-FIQA and EX-FIQA (its "
              "depth-weighted fusion FW) read the ViT-FIQA quality model; comparison scores are the recogniser's "
              "cosine similarities. Higher quality score = better image for every method."),
        ("h2", "What this study can and cannot show"),
        ("p", f"It can show that the tool runs end to end and how each method's score moves with a known "
              f"degradation: on these models, the clean-pair FNMR at FMR 1e-3 is {clean_fnmr:.3f} "
              f"({int(clean_genuine.sum())} clean genuine pairs) and {all_fnmr:.3f} over all images; the "
              f"recogniser fails most on {', '.join(f'{k} (FNMR {fnmr_by_kind[k]:.2f})' for k in worst_kinds)}. "
              f"pAUC relative to random rejection at FMR {' / '.join(f'{f:g}' for f in FMRS)} (below 1 = the "
              f"method discards failing comparisons first): {ratio_text}. "
              + (f"Better than random by at least 5% at both FMRs: {', '.join(better)}. " if better else
                 "No method beats random rejection by 5% at both FMRs. ")
              + (f"Not clearly better than random: {', '.join(not_better)}. " if not_better else "")
              + f"Closest to the ideal: {best}."),
        ("p", "It cannot show how the methods rank on real faces: the faces are procedurally rendered, the "
              f"recogniser is a small ViT ({rec_blocks} blocks) trained on them alone, and each degradation is "
              "synthetic. The papers study large face ViTs on real benchmarks (IJB-C, LFW, ...); for those "
              "numbers use your own model (docs/bring-your-own-model.md) and `vitfiqa reproduce`."),
        ("h2", "Degradations and levels"),
        ("p", "Level 0 is the clean render; levels 1-4 grow in strength. \"L4\" in the figures is level 4, "
              "the strongest."),
        ("table", *_level_table()),
        ("h2", "Verification"),
        ("p", f"Pairs: {int(pairs.n_genuine)} genuine (different renders of one identity) and {impostors} "
              f"impostor. FNMR at the all-image FMR 1e-3 threshold of genuine pairs between a clean image and one "
              "of each degradation (any level, and level 4 only):"),
        ("table", ["pairs", "FNMR"], [[k, f"{v:.2f}"] for k, v in fnmr_by_kind.items()]),
        ("h2", "How each score follows the degradations"),
        ("p", "Spearman correlation of the score with the degradation level, over the clean images and that "
              "degradation's copies. Negative = the score falls as the image degrades (the expected sign); near "
              "0 = the method does not see that degradation; positive = it rates degraded images higher."),
        ("table", ["method", *map(str, corr_table.columns)],
         [[str(name), *(f"{v:+.3f}" for v in row)] for name, row in corr_table.round(3).iterrows()]),
        ("h2", "Error-versus-discard (EDC) and pAUC"),
        ("p", "pAUC-EDC x 10^3, discarding up to 30% of the comparisons by pair quality (the lower quality of the "
              "two images); lower is better. The random-rejection row discards comparisons in random order: a "
              "useful method is below it."),
        ("markdown", to_markdown(df)),
    ]
    for name, why in reasons.items():
        blocks.append(("p", f"{name} does not reach 0.8 x random at both FMRs: {why}."))
    for fmr in FMRS:
        blocks.append(("figure", f"edc_fmr{fmr:g}.png",
                       f"EDC at FMR {fmr:g}: FNMR (y) of the comparisons kept after discarding the lowest-quality "
                       f"fraction (x) by each method, the threshold re-fitted to FMR {fmr:g} at each step. A curve "
                       "that falls faster than the dashed random-rejection curve removes failing comparisons "
                       "first; the legend gives each pAUC up to 30% discard (dotted line)."))
    for key, fname in heatmap_files.items():
        blocks.append(("figure", fname,
                       f"{display_name(key)} heatmaps of three held-out identities (rows): the clean render, then "
                       "level 4 (L4, the strongest) of each degradation. Red = where the method's value is "
                       "highest in that image, blue = lowest (each image scaled to its own min..max, colour bar); "
                       f"under each label, that image's {display_name(key)} score (higher = better quality)."))
    blocks.append(("p", "Files: scores.csv (every image's scores, degradation and level), spearman.csv, pauc.csv, "
                        "summary.json (all numbers above), the PNG figures; report.html holds the figures inline."))
    return blocks


def _inline(text: str) -> str:
    import html
    import re

    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _md_table(header, rows) -> str:
    from vitfiqa.eval import markdown_table

    return markdown_table(header, rows)


def _markdown(blocks, out: Path) -> str:
    lines = []
    for kind, *rest in blocks:
        if kind == "h1":
            lines += [f"# {rest[0]}", ""]
        elif kind == "h2":
            lines += [f"## {rest[0]}", ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            lines += [_md_table(*rest), ""]
        elif kind == "markdown":
            lines += [rest[0].rstrip(), ""]
        elif kind == "figure":
            lines += [f"![{rest[1]}]({rest[0]})", "", f"*{rest[1]}*", ""]
    return "\n".join(lines)


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{_inline(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _parse_md_table(text: str):
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.strip().splitlines()
            if ln.strip().startswith("|")]
    return rows[0], [r for r in rows[2:]]


def _html(blocks, out: Path) -> str:
    """One self-contained page: styles inline, figures embedded as base64 PNG (opens offline anywhere)."""
    import base64
    import html

    parts = []
    for kind, *rest in blocks:
        if kind == "h1":
            parts.append(f"<h1>{html.escape(rest[0])}</h1>")
        elif kind == "h2":
            parts.append(f"<h2>{html.escape(rest[0])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "table":
            parts.append(_html_table(*rest))
        elif kind == "markdown":
            parts.append(_html_table(*_parse_md_table(rest[0])))
        elif kind == "figure":
            data = base64.b64encode((out / rest[0]).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(rest[0])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_inline(rest[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;"
             "text-align:left}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}"
             "figcaption{font-size:.9em;color:#444;margin-top:.4em}code{background:#f3f3f3;padding:0 .2em}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vitfiqa demo report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
