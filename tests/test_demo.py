"""The embedded demo: synthetic faces, the shipped models and their input contract, a tiny train-demo run
(seconds) and a small study run."""
import json

import numpy as np
import pytest
import torch

import vitfiqa
from vitfiqa.demo import QUALITY_MODEL, RECOGNIZER, DemoConfig
from vitfiqa.demo.faces import HELD_OUT, TRAIN, render_faces


def test_faces_are_deterministic_and_batch_independent():
    a = render_faces([3, 7, 7], [0, 1, 2], 64)
    b = render_faces([7], [1], 64)
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[1], b[0])
    np.testing.assert_array_equal(render_faces([5], [2]), render_faces([5], [2]))
    assert not np.array_equal(render_faces([5], [2], namespace=TRAIN), render_faces([5], [2], namespace=HELD_OUT))


def test_identity_survives_nuisance():
    """Two renders of one identity are closer than renders of two identities, on average, after removing
    the background (a crude pixel check that the identity parameters, not only nuisance, shape the image)."""
    ids = np.repeat(np.arange(12), 6)
    smp = np.tile(np.arange(6), 12)
    x = render_faces(ids, smp, 48).astype(np.float32)
    centre = x[:, 12:36, 14:34].reshape(len(x), -1)  # the face, mostly
    d = ((centre[:, None] - centre[None]) ** 2).mean(-1)
    same = ids[:, None] == ids[None]
    off_diag = ~np.eye(len(x), dtype=bool)
    assert d[same & off_diag].mean() < 0.8 * d[~same].mean()


@pytest.mark.parametrize("bad", [dict(identities=[-1], samples=[0]), dict(identities=[1, 2], samples=[0]),
                                 dict(identities=[], samples=[]), dict(identities=[1], samples=[0], size=8)])
def test_faces_reject_bad_input(bad):
    with pytest.raises(ValueError):
        render_faces(**bad)


@pytest.mark.parametrize("path,outputs", [(RECOGNIZER, 1), (QUALITY_MODEL, 2)])
def test_demo_models_ship_with_their_input_contract(path, outputs):
    assert path.is_file(), "vitfiqa train-demo makes it"
    m = vitfiqa.load(path)
    assert m.info["num_outputs"] == outputs and m.info["has_final_norm"]
    assert m.input_contract["image_size"] == (112, 112) and m.channel_order == "rgb"
    assert m.input_contract["source"]["image_size"] == "model record"


def test_train_demo_tiny(tmp_path):
    """The whole train-demo path in seconds: render, recogniser, ViT-FIQA fine-tuned from it, export with
    the contract, and a second call that resumes (nothing left to train) and exports the same models."""
    from vitfiqa.demo.train import train

    cfg = DemoConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_features=16, identities=12,
                     samples=4, batch_size=16, recognizer_epochs=2, quality_epochs=1)
    out = dict(recognizer_out=tmp_path / "r.pt", quality_out=tmp_path / "q.pt", val_identities=6,
               log=lambda *a: None)
    first = train(cfg, tmp_path / "work", **out)
    assert len(first["recognizer_validation"]) == 2 and len(first["quality_validation"]) == 1
    rec, q = vitfiqa.load(tmp_path / "r.pt"), vitfiqa.load(tmp_path / "q.pt")
    assert rec.image_size == q.image_size == (32, 32)
    faces = list(render_faces([0, 1], [0, 0], 32, HELD_OUT))
    r = q.score(faces, methods=("vitfiqa", "exfiqa", "attn"))
    assert torch.isfinite(r.scores["vitfiqa"]).all()
    before = (tmp_path / "q.pt").read_bytes()
    again = train(cfg, tmp_path / "work", **out)
    assert again["recognizer_validation"] == first["recognizer_validation"]
    np.testing.assert_array_equal(vitfiqa.load(before).score(faces, methods=("vitfiqa",)).numpy()["vitfiqa"],
                                  r.numpy()["vitfiqa"])


def test_demo_study_small(tmp_path):
    from vitfiqa.demo.study import LEVELS, run_demo

    summary = run_demo(tmp_path / "report", identities=8, samples=2, log=lambda *a: None)
    files = ["scores.csv", "spearman.csv", "pauc.csv", "edc_fmr0.01.png", "edc_fmr0.001.png", "heatmaps_attn.png",
             "heatmaps_vitnt.png", "report.md", "summary.json"]
    for f in files:
        assert (tmp_path / "report" / f).stat().st_size > 100, f
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["images"] == 8 * 2 * (1 + len(LEVELS))
    assert len(saved["spearman"]) == 4 * len(LEVELS)
    assert set(saved["targets"]) == {"clean_fnmr_at_fmr_1e-3"} | {
        f"pauc_ratio_to_random/{m}" for m in ("ATTN-FIQA", "ViTNT-FIQA", "ViT-FIQA", "EX-FIQA (FW)")}
    # every missed target is explained in the report
    report = (tmp_path / "report" / "report.md").read_text()
    for name, why in saved["misses"].items():
        assert why in report
    assert "random rejection" in report and summary["seconds"] > 0
    # The report explains itself: no pass/fail lines, the limits of the study with its own numbers, every
    # figure embedded with a caption; the HTML page is self-contained (figures inline, nothing fetched).
    assert "MISSED" not in report and "Targets" not in report
    assert "What this study can and cannot show" in report and f"{saved['clean_fnmr_at_fmr_1e3']:.3f}" in report
    for png in ("edc_fmr0.01.png", "edc_fmr0.001.png", "heatmaps_attn.png", "heatmaps_vitnt.png"):
        assert f"]({png})" in report
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and page.count("<figcaption>") == 4
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "L4" in page and "level 4" in page


def test_heatmap_legend_states_the_level_4_values():
    from vitfiqa.demo.study import LEVEL_LEGEND, LEVELS

    text = LEVEL_LEGEND.replace("\n", " ")
    for kind, values in LEVELS.items():
        assert kind in text and f"{values[-1]:g}" in text.replace("45%", "0.45"), kind


def test_edc_plot_shows_random_rejection_once(tmp_path):
    import numpy as np

    from vitfiqa.eval import Pairs, evaluate, plot_edc

    rng = np.random.default_rng(0)
    n = 200
    pairs = Pairs(np.arange(0, n, 2), np.arange(1, n, 2), rng.random(n // 2) < 0.5)
    sims = rng.random(n // 2) + pairs.genuine
    q = {"ATTN-FIQA": rng.random(n), "random rejection": rng.random(n)}
    fig = plot_edc(evaluate(q, sims, pairs, fmrs=(0.1,)), fmr=0.1)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum("random" in t for t in labels) == 1, labels
    fig = plot_edc(evaluate({"ATTN-FIQA": q["ATTN-FIQA"]}, sims, pairs, fmrs=(0.1,)), fmr=0.1)
    assert sum("random" in t.get_text() for t in fig.axes[0].get_legend().get_texts()) == 1


def test_augment_applies_every_degradation_in_range():
    """The training augmentation draws each degradation of the study (JPEG and both exposures included), keeps
    images in [-1, 1], and is reproducible from its seed."""
    from vitfiqa.demo.study import LEVELS
    from vitfiqa.demo.train import DEGRADATIONS, _jpeg, make_augment

    assert set(DEGRADATIONS) == set(LEVELS)
    x = torch.from_numpy(render_faces(np.arange(8), np.zeros(8, int), 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    a, b = make_augment(1.0, seed=3)(x), make_augment(1.0, seed=3)(x)
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert ((a - x).abs().flatten(1).max(1).values > 0.05).sum() >= 6  # degraded (a flip alone may also differ)
    clean = make_augment(0.0, seed=3)(x)
    assert all(torch.equal(c, v) or torch.equal(c, v.flip(2)) for c, v in zip(clean, x))
    j = _jpeg(x[:1], 5)
    assert j.shape == (1, 3, 32, 32) and 0.01 < (j - x[:1]).abs().mean() < 0.5


def test_init_recognizer_loads_weights_and_identity_centres(tmp_path):
    from vitfiqa.demo.train import init_from_recognizer, render_set
    from vitfiqa.models import FaceViT, export_torchscript

    cfg = DemoConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_features=16)
    torch.manual_seed(1)
    src = FaceViT(**cfg.model_kwargs()).eval()
    export_torchscript(src, str(tmp_path / "r.pt"))
    images, ids = render_set(5, 3, 32)
    model = FaceViT(**cfg.model_kwargs())
    head = init_from_recognizer(model, tmp_path / "r.pt", images, ids, cfg)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert head.weight.shape == (5, 16)
    with torch.no_grad():
        from vitfiqa.preprocess import normalize_uint8

        e = torch.nn.functional.normalize(src(normalize_uint8(torch.from_numpy(images))))
    mean0 = torch.nn.functional.normalize(e[ids == 0].mean(0, keepdim=True))
    torch.testing.assert_close(head.weight[:1], mean0, atol=1e-5, rtol=1e-4)
