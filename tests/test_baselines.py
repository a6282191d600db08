"""The baselines (vitfiqa.baselines) against the independent references of tests/reference/baselines.py, on small
random-weight networks of the official architectures: state dicts in the official key layouts are saved, then
loaded through the preset route (strictly), and both sides score the same images."""
import io

import numpy as np
import pytest
import torch

import vitfiqa.baselines as vb
from vitfiqa.baselines import presets as bp

from .reference import baselines as ref

SMALL = (1, 1, 1, 1)       # one block per stage: the official graph, fast on CPU
RTOL = 1e-5


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def _ref_input(images, preset):
    p = vb.PRESETS[preset]
    return ref.normalize_input(images, p.channel_order, p.mean, p.std)


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


# -- layouts ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,keys", [
    ("crfiqa_s", lambda: ref.iresnet_keys((3, 4, 14, 3), qs=True)),
    ("crfiqa_l", lambda: ref.iresnet_keys((3, 13, 30, 3), qs=True)),
    ("magface_r100", lambda: ref.iresnet_keys((3, 13, 30, 3))),
    ("grafiqs_r50", lambda: ref.iresnet_keys((3, 4, 14, 3))),
    ("sddfiqa", lambda: ref.sddfiqa_keys((3, 4, 14, 3))),
    ("ediffiqa_t", lambda: ref.ediffiqa_keys()),
    ("ediffiqa_s", lambda: ref.ediffiqa_keys((2, 2, 2, 2))),
    ("ediffiqa_l", lambda: ref.ediffiqa_keys((3, 13, 30, 3))),
])
def test_full_depth_layouts_are_the_official_ones(preset, keys):
    with torch.device("meta"):
        net = vb.PRESETS[preset].build()
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == keys()


def test_stages_and_embedding_layers_found():
    from vitfiqa.baselines.nets import structure

    with torch.device("meta"):
        ir = vb.PRESETS["curricularface_ir101"].build()     # units 3, 13, 30, 3
        sdd = vb.PRESETS["sddfiqa"].build()                 # units 3, 4, 14, 3
        crf = vb.PRESETS["crfiqa_l"].build()
        mfn = vb.PRESETS["ediffiqa_t"].build()
    assert structure(ir).stages == ("body.2", "body.15", "body.45", "body.48")
    assert structure(ir).embedding_layer == "output_layer.3" and structure(ir).after == ("output_layer.4",)
    assert structure(sdd).stages == ("body.2", "body.6", "body.20", "body.23")
    assert structure(sdd).embedding_layer is None
    assert structure(crf).stages == ("layer1", "layer2", "layer3", "layer4") and structure(crf).embedding_layer == "fc"
    assert structure(mfn).embedding_layer == "base_model.linear" and structure(mfn).normalized


def test_presets_record_their_input():
    assert (vb.PRESETS["magface_r100"].mean, vb.PRESETS["magface_r100"].std) == (0.0, 1.0)
    for name in ("crfiqa_s", "crfiqa_l", "sddfiqa", "ediffiqa_t"):
        p = vb.PRESETS[name]
        assert (p.channel_order, p.mean, p.std) == ("rgb", 0.5, 0.5) and p.source
    assert vb.PRESETS["magface_r100"].channel_order == "bgr"  # MagFace's own gen_feat.py: cv2.imread as read
    from vitfiqa.options import ModelOptions

    m = vb.load("ediffiqa_t", options=ModelOptions(channel_order="bgr"))
    assert (m.channel_order, m.normalization["std"]) == ("bgr", [0.5] * 3)
    assert vb.load("ediffiqa_t", options={"channel_order": "bgr"}, channel_order="rgb").channel_order == "rgb"
    with pytest.raises(ValueError, match="float32"):
        vb.load("ediffiqa_t", options={"dtype": "float16"})


# -- each baseline against its reference -------------------------------------------------------------------------

def test_magface_matches_reference(tmp_path, images):
    sd = ref.random_state(ref.iresnet_keys(SMALL), seed=1)
    # MagFace's own checkpoint layout: {"state_dict": {"module.features.<key>", "module.fc.weight" (MagLinear)}}
    ckpt = {"epoch": 1, "arch": "iresnet100", "state_dict": {**{f"module.features.{k}": v for k, v in sd.items()},
                                                             "module.fc.weight": torch.randn(512, 10)}}
    m = vb.load("magface_r100", checkpoint=_save(tmp_path, "magface.pth", ckpt), overrides={"layers": SMALL})
    got = vb.score("magface", m, images[:1]).scores["magface"].numpy()
    want = ref.magface(sd, _ref_input(images[:1], "magface_r100"), SMALL, eps=2e-5)
    _close(got, want)


def test_crfiqa_matches_reference(tmp_path, images):
    sd = ref.random_state(ref.iresnet_keys(SMALL, qs=True), seed=2)
    m = vb.load("crfiqa_s", checkpoint=_save(tmp_path, "181952backbone.pth", sd), overrides={"layers": SMALL})
    got = vb.score("crfiqa", m, images[:1]).scores["crfiqa"].numpy()
    with torch.no_grad():
        want = ref.iresnet_forward(sd, _ref_input(images[:1], "crfiqa_s"), SMALL)[1][:, 0].numpy()
    _close(got, want)


def test_sddfiqa_matches_reference(tmp_path, images):
    sd = ref.random_state(ref.sddfiqa_keys(SMALL), seed=3)
    path = _save(tmp_path, "SDD_FIQA_checkpoints_r50.pth", {f"module.{k}": v for k, v in sd.items()})
    m = vb.load("sddfiqa", checkpoint=path, overrides={"units": SMALL})
    got = vb.score("sddfiqa", m, images[:1]).scores["sddfiqa"].numpy()
    with torch.no_grad():
        want = ref.sddfiqa_forward(sd, _ref_input(images[:1], "sddfiqa"), SMALL).numpy()
    _close(got, want)
    with pytest.raises(ValueError, match="module."):
        vb.load("sddfiqa", checkpoint=sd, overrides={"units": SMALL})  # the official file is prefixed


@pytest.mark.parametrize("preset,layers", [("ediffiqa_t", None), ("ediffiqa_m", SMALL)])
def test_ediffiqa_matches_reference(tmp_path, images, preset, layers):
    sd = ref.random_state(ref.ediffiqa_keys(layers), seed=4)
    m = vb.load(preset, checkpoint=_save(tmp_path, f"{preset}.pth", sd),
                overrides={"layers": layers} if layers else None)
    got = vb.score("ediffiqa", m, images[:1]).scores["ediffiqa"].numpy()
    with torch.no_grad():
        want = ref.ediffiqa_forward(sd, _ref_input(images[:1], preset), layers).numpy()
    _close(got, want)


@pytest.fixture(scope="module")
def arcface_small(tmp_path_factory):
    sd = ref.random_state(ref.iresnet_keys(SMALL), seed=5)
    path = tmp_path_factory.mktemp("arc") / "backbone.pth"
    torch.save(sd, path)
    return sd, vb.load("arcface_r50", checkpoint=str(path), overrides={"layers": SMALL})


def test_serfiq_matches_reference_full_passes(arcface_small, images):
    sd, m = arcface_small
    T, p, seed = 4, 0.5, 11
    one = images[:1]
    got = vb.score("serfiq", m, one, T=T, seed=seed).scores
    paper, released = ref.serfiq(sd, _ref_input(one, "arcface_r50"), SMALL, T, p, seed)
    _close(got["serfiq"].numpy(), paper)
    # released = sigmoid(alpha (s - r)): its error is alpha * rel * (1 - rel) times the paper score's
    rel = got["serfiq_released"].numpy()
    bound = 130.0 * rel * (1 - rel) * RTOL * paper + 1e-300
    assert np.all(np.abs(rel - released) <= bound + RTOL * np.abs(released))
    # the package's own whole-network passes (what the released code does) agree with the head-only passes
    full = vb.score("serfiq", m, one, T=T, seed=seed, full_passes=True).scores["serfiq"].numpy()
    _close(full, got["serfiq"].numpy())


def test_serfiq_seeded_reproducible_and_batch_independent(arcface_small, images):
    _, m = arcface_small
    x = m.prepare(images)  # prepared once; the head runs T times per call
    a = vb.score("serfiq", m, x, T=5, seed=3).scores["serfiq"].numpy()
    b = vb.score("serfiq", m, x, T=5, seed=3).scores["serfiq"].numpy()
    c = vb.score("serfiq", m, x, T=5, seed=4).scores["serfiq"].numpy()
    one = vb.score("serfiq", m, x[1:], T=5, seed=3).scores["serfiq"].numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    _close(one, a[1:])
    with pytest.raises(ValueError, match="T"):
        vb.score("serfiq", m, x, T=1)
    with pytest.raises(ValueError, match="dropout rate"):
        vb.score("serfiq", m, x, p=1.0)


def test_grafiqs_matches_reference_and_is_batch_independent(arcface_small, images):
    sd, m = arcface_small
    got = vb.score("grafiqs", m, images).scores          # both images in one batch
    want = ref.grafiqs(sd, _ref_input(images, "arcface_r50"), SMALL)  # one image at a time
    for g in want:
        _close(got[f"grafiqs_{g}"].numpy(), want[g])
    assert np.array_equal(got["grafiqs"].numpy(), got["grafiqs_block2"].numpy())  # the paper's headline
    assert (got["grafiqs"].numpy() < 0).all()  # lower gradient sum = better: the score is its negative
    # batch independence: both images scored in ONE batch equal the reference's one-image-at-a-time values


# -- TorchScript recognisers and other inputs -------------------------------------------------------------------------

def test_torchscript_recogniser_rebuilt_eagerly(tmp_path, images):
    sd = ref.random_state(ref.iresnet_keys(SMALL, qs=True), seed=6)
    eager = vb.load("crfiqa_s", checkpoint=sd, overrides={"layers": SMALL})
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(eager.network), buf)
    scripted = vb.load(buf.getvalue(), channel_order="rgb")
    assert scripted.is_script
    one = images[:1]
    with torch.no_grad():
        emb, qs = eager.network(eager.prepare(one))
    _close(vb.score("crfiqa", scripted, one).scores["crfiqa"].numpy(), qs[:, 0].numpy())
    _close(vb.score("magface", scripted, one).scores["magface"].numpy(), emb.norm(dim=1).numpy())
    for name, opts in (("grafiqs", {}), ("serfiq", {"T": 3})):  # these two run on the eager rebuild
        a = vb.score(name, eager, one, **opts).scores
        b = vb.score(name, scripted, one, **opts).scores
        for col in a:
            _close(b[col].numpy(), a[col].numpy())


def test_serfiq_on_a_torchscript_vit_recogniser():
    from vitfiqa.demo import RECOGNIZER

    m = vb.load(RECOGNIZER)  # the embedded demo ViT: rebuilt eagerly (head count read from the file)
    imgs = np.random.default_rng(1).integers(0, 256, (1, *m.image_size, 3), dtype=np.uint8)
    head = vb.score("serfiq", m, imgs, T=5).scores["serfiq"].numpy()
    full = vb.score("serfiq", m, imgs, T=5, full_passes=True).scores["serfiq"].numpy()
    _close(head, full)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        vb.score("grafiqs", m, imgs)


def test_torchscript_magface_keeps_its_batchnorm_eps(images):
    net = vb.PRESETS["magface_r100"].build(layers=SMALL).eval()
    net.load_state_dict(ref.random_state(ref.iresnet_keys(SMALL), seed=8))
    m = vb.load(torch.jit.script(net))
    eager = m.eager
    assert {mod.eps for mod in eager.modules() if isinstance(mod, torch.nn.BatchNorm2d)} == {2e-5}


def test_unknown_layout_and_wrong_network_refused(images):
    sd = ref.random_state(ref.iresnet_keys(SMALL), seed=9)
    m = vb.load("arcface_r50", checkpoint=sd, overrides={"layers": SMALL})
    for name in ("crfiqa", "sddfiqa", "ediffiqa"):
        with pytest.raises(ValueError, match="needs"):
            vb.score(name, m, images)

    class NoBN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.lin(x.mean(dim=(2, 3)))

    plain = vb.load(NoBN())
    assert vb.score("magface", plain, images).scores["magface"].shape == (2,)
    with pytest.raises(ValueError, match="layout"):
        vb.score("serfiq", plain, images)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        vb.score("grafiqs", plain, images)
    with pytest.raises(ValueError, match="uint8"):
        vb.score("magface", plain, images.astype(np.float32))
    with pytest.raises(ValueError, match="takes"):
        vb.score("magface", plain, images[:, :100])
    with pytest.raises(TypeError, match="unknown option"):
        vb.score("magface", plain, images, options={"magface": {"T": 3}})
    with pytest.raises(FileNotFoundError, match="not a preset"):
        vb.load("not_a_preset")


def test_one_registry_for_vit_methods_and_baselines():
    from vitfiqa.config import methods as vit_methods, score_columns as vit_columns

    for m in vit_methods():
        assert vb.source_of(m) == ("vit", m)
    for col, m in vit_columns().items():
        assert vb.source_of(col) == ("vit", m)
    assert vb.source_of("serfiq_released") == ("baseline", "serfiq")
    assert vb.source_of("grafiqs_block3") == ("baseline", "grafiqs")
    assert set(vb.METHODS) == {"magface", "serfiq", "crfiqa", "grafiqs", "sddfiqa", "ediffiqa"}
    cols = vb.all_columns()
    assert len(cols) == len(set(cols)) and set(vit_columns()) <= set(cols)
    with pytest.raises(ValueError, match="unknown method"):
        vb.source_of("brisque")
    with pytest.raises(ValueError, match="ViT method"):
        vb.score("attn", "arcface_r50", np.zeros((1, 112, 112, 3), np.uint8))
    assert vb.display_name("serfiq_released") == "SER-FIQ (released)"


def test_state_dict_layouts_refuse_other_files(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        bp.state_dict_of({}, "nope")
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        bp.state_dict_of(str(bad), "bare")


# -- the CLI and reproduce rows ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ediffiqa_ckpt(tmp_path_factory):
    sd = ref.random_state(ref.ediffiqa_keys(), seed=12)
    path = tmp_path_factory.mktemp("ediff") / "ediffiqaT.pth"
    torch.save(sd, path)
    return sd, str(path)


def test_cli_scores_baselines_into_a_results_table(tmp_path, ediffiqa_ckpt, images):
    import pandas as pd
    from PIL import Image

    from vitfiqa.cli import main

    sd, ckpt = ediffiqa_ckpt
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "scores.csv"
    args = ["-q", "score", "--method", "ediffiqa", "--preset", "ediffiqa_t", "--checkpoint", ckpt, "--images",
            str(folder), "--out", str(out), "--batch-size", "2"]
    assert main(args) == 0
    frame = pd.read_csv(out).sort_values("index")
    assert list(frame.columns[:2]) == ["index", "path"] and "ediffiqa" in frame.columns
    bad = frame[frame.path.str.endswith("broken.png")]
    assert len(frame) == 3 and bad.ediffiqa.isna().all() and bad.error.iloc[0]
    good = frame[~frame.path.str.endswith("broken.png")].sort_values("path")
    with torch.no_grad():
        want = ref.ediffiqa_forward(sd, ref.normalize_input(images, "rgb", 0.5, 0.5)).numpy()
    _close(good.ediffiqa.to_numpy(), want)
    assert main(args) == 0  # resumes: every batch is done
    assert main(["score", "--method", "attn,ediffiqa", "--preset", "ediffiqa_t", "--checkpoint", ckpt, "--images",
                 str(folder), "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["score", "--method", "ediffiqa", "--preset", "ediffiqa_t", "--images", str(folder), "--out",
                 str(tmp_path / "y.csv")]) == 2  # no checkpoint
    assert main(["score", "--method", "serfiq", "--set", "serfiq.nope=1", "--preset", "arcface_r50", "--checkpoint",
                 ckpt, "--images", str(folder), "--out", str(tmp_path / "z.csv")]) == 2


@pytest.mark.filterwarnings("ignore::UserWarning")  # EDC on a dozen synthetic pairs
def test_reproduce_row_names_a_baseline_like_a_vit_method(tmp_path, ediffiqa_ckpt):
    from vitfiqa.eval import comparison_scores, evaluate, load_bin, synthetic
    from vitfiqa.eval.reproduction import ConfigError, load_config, reproduce
    from vitfiqa.recognizer import Recognizer

    from .models.cases import export, spread

    sd, ckpt = ediffiqa_ckpt
    torch.manual_seed(0)
    cnn = spread(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, 4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                     torch.nn.Flatten(), torch.nn.Linear(32, 16)), std=0.05)
    export(cnn, "script", None, str(tmp_path / "cnn.pt"))
    synthetic.write_bin(tmp_path / "lfw.bin", n_pairs=8, n_subjects=4)
    cfg = {"out": str(tmp_path / "out"), "fmrs": [0.1], "batch_size": 8,
           "benchmarks": [{"name": "LFW", "type": "bin", "path": "lfw.bin"}],
           "recognizers": [{"name": "CNN", "model": "cnn.pt", "flip": "none"}],
           "qualities": [{"name": "eDifFIQA(T)", "method": "ediffiqa", "preset": "ediffiqa_t", "checkpoint": ckpt},
                         {"name": "MagFace", "method": "magface", "model": "cnn.pt"}]}
    res = reproduce(cfg, base=tmp_path, progress=False)
    ds = load_bin(tmp_path / "lfw.bin")
    imgs = np.concatenate([b.images for b in ds.iter_batches(8)])
    with torch.no_grad():
        q_ed = ref.ediffiqa_forward(sd, ref.normalize_input(imgs, "rgb", 0.5, 0.5)).numpy()
    q_mag = vb.score("magface", str(tmp_path / "cnn.pt"), imgs).scores["magface"].numpy()
    rec = Recognizer(str(tmp_path / "cnn.pt"), flip="none")
    direct = evaluate({"eDifFIQA(T)": q_ed, "MagFace": q_mag}, comparison_scores(rec.embed(imgs), ds.pairs),
                      ds.pairs, fmrs=[0.1])
    for name in ("eDifFIQA(T)", "MagFace"):
        got = res.frame[res.frame.method == name].pauc.iloc[0]
        assert got == pytest.approx(float(direct[direct.method == name].pauc.iloc[0]), rel=1e-6, abs=1e-9)
    again = reproduce(cfg, base=tmp_path, progress=False)  # cached tables: the same numbers
    assert np.array_equal(again.frame.pauc.to_numpy(), res.frame.pauc.to_numpy())
    bad = [({"preset": "ediffiqa_t"}, "needs checkpoint"), ({"model": "cnn.pt", "checkpoint": ckpt}, "preset"),
           ({"preset": "nope", "checkpoint": ckpt}, "preset must be"),
           ({"preset": "ediffiqa_t", "checkpoint": ckpt, "options": {"T": 3}}, "unknown option")]
    for change, msg in bad:
        q = {"name": "X", "method": "ediffiqa", **change}
        with pytest.raises(ConfigError, match=msg):
            load_config({**cfg, "qualities": [q]}, base=tmp_path)
