"""`vitfiqa reproduce`: the table equals direct vitfiqa.eval calls; caching, resume, changed configs, skipped
benchmarks, external scores and embeddings, the CLI."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from vitfiqa.cli import main
from vitfiqa.eval import (comparison_scores, evaluate, extract_embeddings, ijbc_templates, load_bin, load_ijbc,
                          score_image_set,
                          synthetic)
from vitfiqa.eval.reproduction import reproduce
from vitfiqa.recognizer import Recognizer

from .models.cases import export, spread

FMRS = [1e-1, 1e-2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_cases):
    root = tmp_path_factory.mktemp("reproduce")
    torch.manual_seed(0)
    cnn = spread(nn.Sequential(nn.Conv2d(3, 8, 5, 4), nn.ReLU(), nn.Conv2d(8, 16, 3, 2), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32)), std=0.05)
    export(cnn, "script", None, str(root / "cnn.pt"))
    synthetic.write_bin(root / "lfw.bin", n_pairs=24, n_subjects=8)
    synthetic.write_ijbc(root / "IJBC", n_subjects=4, templates_per_subject=2)
    synthetic.write_adience(root / "adience", n_subjects=4, per_subject=3)
    vit = model_cases["insightface-script"].path
    return root, vit


def config(root, vit, **extra):
    cfg = {
        "out": str(root / "out"),
        "fmrs": FMRS,
        "batch_size": 16,
        "benchmarks": [{"name": "LFW", "type": "bin", "path": "lfw.bin"},
                       {"name": "IJB-C", "type": "ijbc", "root": "IJBC"},
                       {"name": "Adience", "type": "adience", "root": "adience"}],
        "recognizers": [{"name": "CNN", "model": "cnn.pt", "channel_order": "bgr"}],
        "qualities": [{"name": "ATTN", "method": "attn", "model": vit},
                      {"name": "ViTNT", "method": "vitnt", "model": vit, "options": {"vitnt": {"scale": 8.0}}}],
    }
    cfg.update(extra)
    return cfg


def pauc(frame, method, bench, fmr):
    row = frame[(frame.method == method) & (frame.benchmark == bench) & np.isclose(frame.fmr, fmr)]
    assert len(row) == 1
    return float(row.pauc.iloc[0])


def test_table_equals_direct_eval_calls(setup, tmp_path):
    import vitfiqa

    root, vit = setup
    res = reproduce(config(root, vit, out=str(tmp_path / "out")), base=root, progress=False)
    assert not res.skipped
    for name in ("markdown", "latex", "csv", "edc_png", "edc_pdf", "resolved_config"):
        assert (tmp_path / "out" / res.files[name].split("/")[-1]).stat().st_size > 0
    resolved = json.loads((tmp_path / "out" / "resolved_config.json").read_text())
    assert resolved["versions"]["torch"].startswith("2.") and resolved["config"]["fmrs"] == FMRS
    assert "**FMR=1e-1**" in res.markdown and "| LFW / CNN |" in res.markdown.replace("Method |", "|")

    qm = vitfiqa.load(vit)
    rec = Recognizer(str(root / "cnn.pt"), channel_order="bgr", flip="concat")
    # LFW (.bin): per-image qualities and flip-concatenated embeddings
    ds = load_bin(root / "lfw.bin")
    q = score_image_set(qm, ds, methods=("attn", "vitnt"), progress=False)
    emb = np.concatenate([e for _, e in extract_embeddings(rec, ds, 16)])
    direct = evaluate({"ATTN": q["attn"], "ViTNT": q["vitnt"]}, comparison_scores(emb, ds.pairs), ds.pairs,
                      fmrs=FMRS)
    # IJB-C: aligned loose crops, template features and template qualities
    ij = load_ijbc(root / "IJBC")
    qi = score_image_set(qm, ij, methods=("attn",), progress=False)["attn"]
    ei = np.concatenate([e for _, e in extract_embeddings(rec, ij, 16)])
    _, tf, tq = ijbc_templates(ei, qi, ij.templates.template, ij.templates.media)
    direct_ij = evaluate({"ATTN": tq}, comparison_scores(tf, ij.pairs), ij.pairs, fmrs=FMRS)
    for fmr in FMRS:
        for m in ("ATTN", "ViTNT"):
            assert pauc(res.frame, m, "LFW", fmr) == pytest.approx(
                float(direct[(direct.method == m) & np.isclose(direct.fmr, fmr)].pauc.iloc[0]), rel=1e-6, abs=1e-9)
        assert pauc(res.frame, "ATTN", "IJB-C", fmr) == pytest.approx(
            float(direct_ij[np.isclose(direct_ij.fmr, fmr)].pauc.iloc[0]), rel=1e-6, abs=1e-9)
    # the CSV holds the same numbers as the frame
    csv = pd.read_csv(res.files["csv"])
    row = csv[(csv.method == "ATTN") & (csv.block == "FMR=1e-1")]
    assert float(row["IJB-C / CNN"].iloc[0]) == pytest.approx(pauc(res.frame, "ATTN", "IJB-C", 0.1) * 1e3)


def test_resume_and_changed_config(setup, tmp_path, monkeypatch):
    root, vit = setup
    cfg = config(root, vit, out=str(tmp_path / "out"), benchmarks=[{"name": "LFW", "type": "bin", "path": "lfw.bin"}])
    from vitfiqa.api import QualityModel

    orig_score = QualityModel.score
    scored = []

    def score_then_stop(self, x, **kw):
        if scored:
            raise KeyboardInterrupt  # stopped while scoring qualities, after one batch
        scored.append(len(x))
        return orig_score(self, x, **kw)

    monkeypatch.setattr(QualityModel, "score", score_then_stop)
    with pytest.raises(KeyboardInterrupt):
        reproduce(cfg, base=root, progress=False)
    monkeypatch.setattr(QualityModel, "score", lambda self, x, **kw: scored.append(len(x)) or orig_score(self, x, **kw))
    embedded = []
    original = Recognizer.embed

    def interrupted(self, images):
        if len(embedded) >= 32:
            raise KeyboardInterrupt  # the user stops the run after two batches
        embedded.extend(range(len(images)))
        return original(self, images)

    monkeypatch.setattr(Recognizer, "embed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce(cfg, base=root, progress=False)
    # ATTN's results table resumed after its first batch (16 + 32 images); ViTNT (other options: its own pass) 48
    assert len(embedded) == 32 and scored == [16] * 6
    counted = []

    def counting(self, images):
        counted.extend(range(len(images)))
        return original(self, images)

    monkeypatch.setattr(Recognizer, "embed", counting)
    first = reproduce(cfg, base=root, progress=False)
    assert len(counted) == 48 - 32  # only the images not embedded before the interruption
    # unchanged config: nothing is computed again; a changed quality option recomputes that quality only
    scored.clear()
    counted.clear()
    again = reproduce(cfg, base=root, progress=False)
    assert counted == [] and scored == []
    pd.testing.assert_frame_equal(first.frame.drop(columns="curve"), again.frame.drop(columns="curve"))
    cfg["qualities"][1]["options"] = {"vitnt": {"scale": 4.0}}
    changed = reproduce(cfg, base=root, progress=False)
    assert counted == [] and sum(scored) == 48
    assert pauc(changed.frame, "ATTN", "LFW", 0.1) == pauc(first.frame, "ATTN", "LFW", 0.1)


def test_corrupt_benchmark_is_skipped_and_external_sources(setup, tmp_path):
    root, vit = setup
    (tmp_path / "broken.bin").write_bytes(b"not a pickle")
    ds = load_bin(root / "lfw.bin")
    rng = np.random.default_rng(0)
    other = rng.random(len(ds))
    # competitor scores keyed by index (CSV) and by another machine's absolute paths (CR-FIQA txt, Adience)
    pd.DataFrame({"index": np.arange(len(ds))[::-1], "score": other[::-1]}).to_csv(tmp_path / "other_lfw.csv",
                                                                                 index=False)
    from vitfiqa.eval import load_adience

    ad = load_adience(root / "adience")
    ad_scores = rng.random(len(ad))
    (tmp_path / "other_adience.txt").write_text(
        "".join(f"/data/someone/adience/{k} {s}\n" for k, s in zip(ad.keys, ad_scores)))
    emb = rng.normal(size=(len(ds), 16)).astype(np.float32)
    np.save(tmp_path / "emb_lfw.npy", emb)
    np.savez(tmp_path / "emb_adience.npz", keys=np.asarray(ad.keys), embeddings=rng.normal(size=(len(ad), 16)))
    cfg = config(root, vit, out=str(tmp_path / "out"))
    cfg["benchmarks"] = [{"name": "LFW", "type": "bin", "path": "lfw.bin"},
                         {"name": "Broken", "type": "bin", "path": str(tmp_path / "broken.bin")},
                         {"name": "Adience", "type": "adience", "root": "adience"}]
    cfg["recognizers"] = [{"name": "Pre", "embeddings": {"LFW": str(tmp_path / "emb_lfw.npy"),
                                                          "Adience": str(tmp_path / "emb_adience.npz")}}]
    cfg["qualities"] = [{"name": "Other", "scores": {"LFW": str(tmp_path / "other_lfw.csv"),
                                                     "Adience": str(tmp_path / "other_adience.txt")}},
                        {"name": "Other-negated", "higher_is_better": False,
                         "scores": {"LFW": str(tmp_path / "other_lfw.csv")}}]
    res = reproduce(cfg, base=root, progress=False)
    assert list(res.skipped) == ["Broken"] and "not an insightface .bin" in res.skipped["Broken"]
    direct = evaluate({"Other": other, "Other-negated": -other}, comparison_scores(emb, ds.pairs), ds.pairs, fmrs=FMRS)
    for m in ("Other", "Other-negated"):
        assert pauc(res.frame, m, "LFW", 0.1) == pytest.approx(
            float(direct[(direct.method == m) & np.isclose(direct.fmr, 0.1)].pauc.iloc[0]))
    assert pauc(res.frame, "Other", "Adience", 0.1) >= 0
    assert set(res.frame.benchmark) == {"LFW", "Adience"}


def test_cli_reproduce_and_config_errors(setup, tmp_path, capsys):
    root, vit = setup
    toml = tmp_path / "table.toml"
    toml.write_text(f'''out = "{tmp_path / 'cli_out'}"
fmrs = [0.1]

[[benchmarks]]
name = "LFW"
type = "bin"
path = "{root / 'lfw.bin'}"

[[recognizers]]
name = "CNN"
model = "{root / 'cnn.pt'}"

[[qualities]]
name = "ATTN"
method = "attn"
model = "{vit}"
''')
    assert main(["-q", "reproduce", str(toml)]) == 0
    assert "| ATTN |" in capsys.readouterr().out and (tmp_path / "cli_out" / "table.tex").is_file()
    toml.write_text(toml.read_text().replace('method = "attn"', 'method = "bogus"'))
    assert main(["-q", "reproduce", str(toml)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method must be one of" in err[0]
    toml.write_text("this is = not toml [")
    assert main(["-q", "reproduce", str(toml)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_cli_evaluate_with_a_cnn_recognizer(setup, tmp_path, capsys):
    """`vitfiqa evaluate --fr-model cnn.pt` used to fail with "no attention found": recognizers are run as is."""
    root, vit = setup
    assert main(["-q", "evaluate", "--model", vit, "--fr-model", str(root / "cnn.pt"), "--bin", str(root / "lfw.bin"),
                 "--fmr", "0.1", "--methods", "attn", "--out", str(tmp_path / "ev"), "--channel-order", "bgr"]) == 0
    assert "lfw FMR=1e-1" in capsys.readouterr().out


@pytest.mark.parametrize("change, msg", [
    (lambda c: c.update(bogus=1), "unknown config keys"),
    (lambda c: c["benchmarks"].append({"name": "X", "type": "pairs", "root": "."}), "missing 'pairs'"),
    (lambda c: c["benchmarks"].append({"name": "LFW", "type": "bin", "path": "x.bin"}), "duplicate benchmarks"),
    (lambda c: c["benchmarks"].append({"name": "Y", "type": "megaface", "path": "x"}), "type must be one of"),
    (lambda c: c["qualities"].append({"name": "Q", "method": "attn", "model": "m.pt", "scores": {"LFW": "a.csv"}}),
     "either method"),
    (lambda c: c["qualities"].append({"name": "Q", "scores": {"Nope": "a.csv"}}), "unknown benchmarks"),
    # EX-FIQA's own option (issue 10: options of methods not requested are ignored)
    (lambda c: c["qualities"].append({"name": "Q", "method": "exfiqa_F", "model": "m.pt",
                                      "options": {"exit_normalization": "zscore"}}), "batching"),
    (lambda c: c.update(fmrs=[0.5, 2.0]), "fmrs"),
    (lambda c: c.update(variant="erc"), "variant must be one of"),
    (lambda c: c["recognizers"].append({"name": "R"}), "needs a model"),
    (lambda c: c["recognizers"][0].update(std=[0.5, 0.0, 0.5]), "std must be positive"),
])
def test_config_errors(setup, change, msg):
    from vitfiqa.eval.reproduction import load_config

    root, vit = setup
    (root / "m.pt").write_bytes(b"not checked before it is loaded")
    cfg = config(root, vit)
    change(cfg)
    with pytest.raises(ValueError, match=msg):
        load_config(cfg, base=root)


def test_external_files_parquet_npz_and_matching(tmp_path):
    """Score and embedding files keyed by image: Parquet, .npz, relative or foreign absolute paths, bare names;
    an ambiguous or duplicated entry is refused."""
    from vitfiqa.eval import ImageSet, Pairs
    from vitfiqa.eval.datasets import CorruptEntry
    from vitfiqa.eval.reproduction import QualitySpec, read_external_embeddings, read_external_scores

    keys = ["a/x.jpg", "b/x.jpg", "b/y.jpg"]
    ds = ImageSet("toy", [str(tmp_path / k) for k in keys], Pairs([0, 1], [1, 2], [True, False]), keys=keys)
    pd.DataFrame({"path": ["/elsewhere/b/y.jpg", "a/x.jpg", "/elsewhere/b/x.jpg"], "q": [3.0, 1.0, 2.0],
                  "other": [0, 0, 0]}).to_parquet(tmp_path / "s.parquet")
    spec = QualitySpec("Q", scores={"toy": str(tmp_path / "s.parquet")}, column="q")
    np.testing.assert_array_equal(read_external_scores(spec, "toy", ds), [1.0, 2.0, 3.0])
    pd.DataFrame({"path": ["y.jpg"], "q": [5.0]}).to_csv(tmp_path / "bare.csv", index=False)
    with pytest.raises(CorruptEntry, match=r"bare.csv\): 2 of 3 images of toy have no entry"):  # partial: refused
        read_external_scores(QualitySpec("Q", scores={"toy": str(tmp_path / "bare.csv")}), "toy", ds)
    pd.DataFrame({"path": ["x.jpg"], "q": [5.0]}).to_csv(tmp_path / "ambiguous.csv", index=False)
    with pytest.raises(CorruptEntry, match="matches 2 images"):
        read_external_scores(QualitySpec("Q", scores={"toy": str(tmp_path / "ambiguous.csv")}), "toy", ds)
    pd.DataFrame({"index": [0, 0], "q": [1.0, 2.0]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(CorruptEntry, match="listed twice with different values"):
        read_external_scores(QualitySpec("Q", scores={"toy": str(tmp_path / "dup.csv")}), "toy", ds)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    pd.DataFrame({"image": keys[::-1], "embedding": list(emb[::-1])}).to_parquet(tmp_path / "e.parquet")
    np.testing.assert_array_equal(read_external_embeddings(str(tmp_path / "e.parquet"), ds, "R"), emb)
    np.savez(tmp_path / "e.npz", keys=np.array([2, 0, 1]), embeddings=emb[[2, 0, 1]])
    np.testing.assert_array_equal(read_external_embeddings(str(tmp_path / "e.npz"), ds, "R"), emb)
    np.save(tmp_path / "short.npy", emb[:2])
    with pytest.raises(CorruptEntry, match="benchmark's image order"):
        read_external_embeddings(str(tmp_path / "short.npy"), ds, "R")
