"""The table path from the public release files (issue 22, items 6-7): channel order of the release files and of
CR-FIQA's prepared folders, `method = "exfiqa"`, model options on quality rows, score files keyed by CR-FIQA's
own paths, bad or partial score files, CR-FIQA's XQLFW list."""
import io
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import vitfiqa
from vitfiqa.demo import QUALITY_MODEL
from vitfiqa.eval import load_bin, load_lfw_pairs, load_pair_list, score_image_set, synthetic
from vitfiqa.eval.reproduction import ConfigError, load_config, reproduce
from vitfiqa.fr_models import RECOGNIZERS
from vitfiqa.models import export_torchscript
from vitfiqa.recognizer import Recognizer

FMRS = [1e-1]


class ChannelProbe(nn.Module):
    """Embedding = the per-channel mean of the input, in the order the model receives the channels."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def cv2_imwrite(path, array):
    """What CR-FIQA's extraction does with ``cv2.imwrite(path, array)``: the array's channels are stored as
    B, G, R, so a reader that decodes R, G, B gets them reversed. Lossless (PNG) so both paths can agree bit
    for bit."""
    Image.fromarray(np.ascontiguousarray(array[..., ::-1])).save(path, format="PNG")


def images(n, seed=0):
    """Faces of a synthetic benchmark plus a flat colour first, whose channels a probe tells apart."""
    rng = np.random.default_rng(seed)
    out = [np.broadcast_to(np.array([200, 100, 20], np.uint8), (112, 112, 3)).copy()]
    bases = [synthetic._identity_pattern(rng) for _ in range(4)]
    while len(out) < n:
        out.append(synthetic.face_image(bases[len(out) % 4], rng, float(rng.random() ** 2)))
    return out


def prepare_like_extract_bin(bin_path, data_dir, dataset="lfw"):
    """CR-FIQA's feature_extraction/extract_bin.py output, lossless (PNG bytes under its .jpg names)."""
    return synthetic.write_crfiqa_prepared(bin_path, data_dir, dataset, lossless=True)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A .bin release (PNG images, 20 pairs = 40 images), CR-FIQA's prepared folder of it, a channel probe
    recorded with the ArcFace preset's contract, and a small CNN recognizer."""
    root = tmp_path_factory.mktemp("release")
    imgs = images(40)
    with open(root / "lfw.bin", "wb") as f:
        pickle.dump(([png(im) for im in imgs], [k % 2 == 0 for k in range(20)]), f, protocol=4)
    prepare_like_extract_bin(root / "lfw.bin", root / "data")
    pre = RECOGNIZERS["arcface_r100"]
    export_torchscript(ChannelProbe(), str(root / "probe.pt"), input_contract={
        "image_size": [112, 112], "channel_order": pre.channel_order,
        "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}})
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 5, 4), nn.ReLU(), nn.Conv2d(8, 16, 3, 2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32)).eval()
    export_torchscript(cnn, str(root / "cnn.pt"))
    return root, imgs


def test_presets_feed_rgb_from_the_release_files(release):
    """Every recognizer preset records RGB; a model with the preset's contract gets the release image's R, G, B
    in that order."""
    root, imgs = release
    assert {p.channel_order for p in RECOGNIZERS.values()} == {"rgb"}
    ds = load_bin(root / "lfw.bin")
    probe = Recognizer(str(root / "probe.pt"), flip="none")
    got = probe.embed(ds.load(0)[None])[0] * 255
    np.testing.assert_allclose(got, [200, 100, 20], atol=1e-3)


def test_prepared_folders_are_swapped_back(release):
    """CR-FIQA's prepared files store the channels swapped: read as they are, a model gets B, G, R;
    prepared="crfiqa" gives it R, G, B, the same pixels as the release file, image for image."""
    root, imgs = release
    probe = Recognizer(str(root / "probe.pt"), flip="none")
    lists = root / "data" / "quality_data" / "lfw"
    raw = load_pair_list(root / "data", lists, ids="names")
    np.testing.assert_allclose(probe.embed(raw.load(0)[None])[0] * 255, [20, 100, 200], atol=1e-3)
    prepared = load_pair_list(root / "data", lists, ids="names", prepared="crfiqa")
    assert prepared.channel_swap and not load_bin(root / "lfw.bin").channel_swap
    np.testing.assert_allclose(probe.embed(prepared.load(0)[None])[0] * 255, [200, 100, 20], atol=1e-3)
    ds = load_bin(root / "lfw.bin")
    np.testing.assert_array_equal(prepared.pairs.a, ds.pairs.a)
    np.testing.assert_array_equal(prepared.pairs.genuine, ds.pairs.genuine)
    a = np.concatenate([im for _, im in ds.batches(16)])
    b = np.concatenate([im for _, im in prepared.batches(16)])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="prepared must be one of"):
        load_pair_list(root / "data", lists, ids="names", prepared="opencv")


def both_paths_config(root, **extra):
    cfg = {"out": str(root / "out"), "fmrs": FMRS, "batch_size": 8,
           "benchmarks": [{"name": "release", "type": "bin", "path": "lfw.bin"},
                          {"name": "prepared", "type": "pair_list", "data_dir": "data",
                           "list_dir": "data/quality_data/lfw", "ids": "names", "prepared": "crfiqa"}],
           "recognizers": [{"name": "CNN", "model": "cnn.pt"}],
           "qualities": [{"name": "ViT-FIQA", "method": "vitfiqa", "model": str(QUALITY_MODEL)},
                         {"name": "EX-FIQA", "method": "exfiqa", "model": str(QUALITY_MODEL)}]}
    cfg.update(extra)
    return cfg


def test_same_scores_from_both_paths_of_the_same_images(release, tmp_path):
    """reproduce on the release .bin and on CR-FIQA's prepared folder of it: the same qualities, embeddings
    and table, because both feed the networks the same RGB pixels."""
    root, _ = release
    res = reproduce(both_paths_config(root, out=str(tmp_path / "out")), base=root, progress=False)
    assert not res.skipped
    f = res.frame.set_index(["method", "benchmark"]).pauc
    for m in ("ViT-FIQA", "EX-FIQA"):
        assert f[(m, "release")] == f[(m, "prepared")]
    # without prepared = "crfiqa" the prepared folder feeds swapped channels: other qualities
    qm = vitfiqa.load(QUALITY_MODEL)
    lists = root / "data" / "quality_data" / "lfw"
    swapped = score_image_set(qm, load_pair_list(root / "data", lists, ids="names"), methods=("vitfiqa",),
                              progress=False)["vitfiqa"]
    right = score_image_set(qm, load_pair_list(root / "data", lists, ids="names", prepared="crfiqa"),
                            methods=("vitfiqa",), progress=False)["vitfiqa"]
    release_q = score_image_set(qm, load_bin(root / "lfw.bin"), methods=("vitfiqa",), progress=False)["vitfiqa"]
    np.testing.assert_array_equal(right, release_q)
    assert np.abs(swapped - right).max() > 1e-4


def test_exfiqa_is_the_papers_fused_score(release, tmp_path):
    """`method = "exfiqa"` is EX-FIQA's FW fusion (the score its paper reports)."""
    root, _ = release
    cfg = load_config(both_paths_config(root), base=root)
    assert [q.method for q in cfg.qualities] == ["vitfiqa", "exfiqa_FW"]
    res = reproduce(both_paths_config(root, out=str(tmp_path / "out"), benchmarks=[
        {"name": "release", "type": "bin", "path": "lfw.bin"}], qualities=[
        {"name": "EX-FIQA", "method": "exfiqa", "model": str(QUALITY_MODEL)},
        {"name": "EX-FIQA-FW", "method": "exfiqa_FW", "model": str(QUALITY_MODEL)}]), base=root, progress=False)
    f = res.frame.set_index("method").pauc
    assert f["EX-FIQA"] == f["EX-FIQA-FW"]
    with pytest.raises(ConfigError, match="method must be one of .*'exfiqa'"):
        load_config(both_paths_config(root, qualities=[{"name": "X", "method": "exfiqa_Q",
                                                        "model": str(QUALITY_MODEL)}]), base=root)


def test_quality_rows_take_model_options(release, tmp_path):
    """A quality row's channel_order (and the other ModelOptions fields) reach the model; bad values are one
    config error; score-file rows refuse them."""
    root, _ = release
    bench = [{"name": "release", "type": "bin", "path": "lfw.bin"}]
    rows = [{"name": "rgb", "method": "vitfiqa", "model": str(QUALITY_MODEL)},
            {"name": "bgr", "method": "vitfiqa", "model": str(QUALITY_MODEL), "channel_order": "bgr"},
            {"name": "norm", "method": "vitfiqa", "model": str(QUALITY_MODEL), "final_norm": "norm",
             "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}]
    cfg = load_config(both_paths_config(root, benchmarks=bench, qualities=rows), base=root)
    assert cfg.qualities[1].model_options(cfg).channel_order == "bgr"
    from vitfiqa.eval.reproduction import compute_qualities, benchmark_fingerprint
    cfg.cache = str(tmp_path / "cache")
    ds = load_bin(root / "lfw.bin")
    got = compute_qualities(cfg.qualities, ds, cfg, benchmark_fingerprint(ds), progress=False)
    for name, kw in (("rgb", {}), ("bgr", {"channel_order": "bgr"}),
                     ("norm", {"final_norm": "norm", "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})):
        want = score_image_set(vitfiqa.load(QUALITY_MODEL, **kw), ds, methods=("vitfiqa",), progress=False)
        np.testing.assert_array_equal(got[name], want["vitfiqa"])
    assert np.abs(got["rgb"] - got["bgr"]).max() > 1e-4
    for bad, msg in (({"channel_order": "BGR"}, "channel_order must be"),
                     ({"normalization": {"mean": [0.5]}}, "normalization must be"),
                     ({"final_norm": ""}, "final_norm must be")):
        with pytest.raises(ConfigError, match=msg):
            load_config(both_paths_config(root, benchmarks=bench, qualities=[{**rows[0], **bad}]), base=root)
    with pytest.raises(ConfigError, match="options of a method row"):
        load_config(both_paths_config(root, benchmarks=bench, qualities=[
            {"name": "ext", "scores": {"release": "s.txt"}, "channel_order": "bgr"}]), base=root)


def test_score_files_keyed_by_crfiqa_paths(release, tmp_path):
    """getQualityScore.py writes `<image_path_list line> <score>`: quality_data/<ds>/images/%05d.jpg for a
    .bin, which matches the .bin's images by index (all 40), and the release-layout benchmarks (XQLFW, IJB-C)
    by file name; an image listed again with the same score (XQLFW) is one entry."""
    from vitfiqa.eval.reproduction import QualitySpec, read_external_scores

    root, _ = release
    ds = load_bin(root / "lfw.bin")
    scores = np.random.default_rng(0).random(len(ds))
    path = tmp_path / "CRFIQAL_lfw.txt"
    path.write_text("".join(f"quality_data/lfw/images/{i:05d}.jpg {float(s)!r}\n" for i, s in enumerate(scores)))
    got = read_external_scores(QualitySpec("CR-FIQA(L)", scores={"lfw": str(path)}), "lfw", ds)
    np.testing.assert_array_equal(got, scores)  # 40 of 40
    pairs = synthetic.write_lfw_style(tmp_path / "xqlfw", n_subjects=4, per_subject=2, n_pairs=6)
    xq = load_lfw_pairs(tmp_path / "xqlfw", pairs)
    names = [k.split("/")[-1] for k in xq.keys]
    listed = [names[i] for ab in zip(xq.pairs.a, xq.pairs.b) for i in ab]  # each pair's images, again
    q = {n: float(i) for i, n in enumerate(names)}
    path = tmp_path / "CRFIQAL_XQLFW.txt"
    path.write_text("".join(f"/data/quality_data/XQLFW/images/{n} {q[n]}\n" for n in listed))
    got = read_external_scores(QualitySpec("CR-FIQA(L)", scores={"xq": str(path)}), "xq", xq)
    np.testing.assert_array_equal(got, [q[n] for n in names])
    ij = synthetic.write_ijbc(tmp_path / "IJBC", n_subjects=2, templates_per_subject=1)
    from vitfiqa.eval import load_ijbc
    ijds = load_ijbc(ij, align=False)
    path = tmp_path / "CRFIQAL_IJBC.txt"
    path.write_text("".join(f"quality_data/IJBC/images/{k.split('/')[-1]} {i}\n" for i, k in enumerate(ijds.keys)))
    got = read_external_scores(QualitySpec("CR-FIQA(L)", scores={"ij": str(path)}), "ij", ijds)
    np.testing.assert_array_equal(got, np.arange(len(ijds)))


def test_bad_or_partial_score_file_drops_the_row_not_the_benchmark(release, tmp_path):
    root, _ = release
    n = 40
    (tmp_path / "good.txt").write_text("".join(f"quality_data/lfw/images/{i:05d}.jpg {i}\n" for i in range(n)))
    (tmp_path / "partial.txt").write_text("".join(f"quality_data/lfw/images/{i:05d}.jpg {i}\n" for i in range(n - 3)))
    (tmp_path / "text.csv").write_text("path,score\n" + "".join(f"{i},high\n" for i in range(n)))
    (tmp_path / "conflict.txt").write_text("".join(f"{i} {i}\n" for i in range(n)) + "0 7\n")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 not really")
    rows = [{"name": "ViT-FIQA", "method": "vitfiqa", "model": str(QUALITY_MODEL)}]
    rows += [{"name": f.split(".")[0], "scores": {"release": str(tmp_path / f)}}
             for f in ("good.txt", "partial.txt", "text.csv", "conflict.txt", "garbage.parquet", "missing.txt")]
    res = reproduce(both_paths_config(root, out=str(tmp_path / "out"), qualities=rows, benchmarks=[
        {"name": "release", "type": "bin", "path": "lfw.bin"}]), base=root, progress=False)
    assert not res.skipped
    assert set(res.frame.method) == {"ViT-FIQA", "good"}
    import json
    notes = "\n".join(json.loads((tmp_path / "out" / "resolved_config.json").read_text())["notes"]["release"])
    for f, why in (("partial.txt", "3 of 40 images of release have no entry"), ("text.csv", "text.csv"),
                   ("conflict.txt", "listed twice with different values"), ("garbage.parquet", "garbage.parquet"),
                   ("missing.txt", "missing.txt")):
        line = next(ln for ln in notes.splitlines() if f.split(".")[0] + ":" in ln)
        assert str(tmp_path / f) in line and why in line, line


def test_crfiqa_xqlfw_list_loads_as_crfiqa_reads_it(tmp_path):
    """extract_xqlfw.py lists both images of every pair (an image once per pair it is in) and writes pair names
    with `.jpg`: loaded as one image per file, the pairs as the release's pairs.txt gives them."""
    pairs = synthetic.write_lfw_style(tmp_path / "xqlfw_aligned_112", n_subjects=5, per_subject=3, n_pairs=12)
    release_ds = load_lfw_pairs(tmp_path / "xqlfw_aligned_112", pairs)
    out = tmp_path / "data" / "quality_data" / "XQLFW"
    (out / "images").mkdir(parents=True)
    listed, pair_lines = [], []
    for line in pairs.read_text().splitlines()[1:]:
        p = line.split()
        a, b = ((p[0], p[1]), (p[0], p[2])) if len(p) == 3 else ((p[0], p[1]), (p[2], p[3]))
        names = []
        for person, num in (a, b):
            name = f"{person}_{int(num):04d}.jpg"
            rgb = np.asarray(Image.open(tmp_path / "xqlfw_aligned_112" / person / name))
            cv2_imwrite(out / "images" / name, rgb)  # cv2.imread gives rgb reversed, COLOR_RGB2BGR reverses it back
            listed.append(f"quality_data/XQLFW/images/{name}")
            names.append(name)
        pair_lines.append(f"{names[0]} {names[1]} {int(len(p) == 3)}")
    (out / "image_path_list.txt").write_text("\n".join(listed) + "\n")
    (out / "pair_list.txt").write_text("\n".join(pair_lines) + "\n")
    assert len(listed) > len(set(listed))  # images listed again
    ds = load_pair_list(tmp_path / "data", out, prepared="crfiqa")
    assert len(ds) == len(set(listed)) == len(release_ds)
    key = lambda d, i: d.keys[i].split("/")[-1]  # noqa: E731
    assert [(key(ds, a), key(ds, b)) for a, b in zip(ds.pairs.a, ds.pairs.b)] == \
           [(key(release_ds, a), key(release_ds, b)) for a, b in zip(release_ds.pairs.a, release_ds.pairs.b)]
    np.testing.assert_array_equal(ds.pairs.genuine, release_ds.pairs.genuine)
    # extract_xqlfw.py swapped the channels of what cv2.imread gave it: the prepared file decodes as the
    # release file's pixels reversed, and prepared="crfiqa" swaps them back
    i = ds.keys.index(listed[0])
    j = [key(release_ds, k) for k in range(len(release_ds))].index(listed[0].split("/")[-1])
    np.testing.assert_array_equal(load_pair_list(tmp_path / "data", out).load(i), release_ds.load(j)[..., ::-1])
    np.testing.assert_array_equal(ds.load(i), release_ds.load(j))


def test_docs_table_config_is_a_valid_config(tmp_path):
    """docs/tables/exfiqa.toml loads (every key, method, preset and option known) once its model and checkpoint
    files exist; it names the eight benchmarks, four recognisers and every row kind."""
    import shutil
    import tomllib
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "docs" / "tables" / "exfiqa.toml"
    shutil.copy(src, tmp_path / "exfiqa.toml")
    raw = tomllib.loads(src.read_text())
    for entry in raw["recognizers"] + raw["qualities"]:
        for key in ("model", "checkpoint"):
            if key in entry:
                (tmp_path / entry[key]).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / entry[key]).write_bytes(b"placeholder")
    cfg = load_config(tmp_path / "exfiqa.toml")
    assert [b.name for b in cfg.benchmarks] == ["LFW", "AgeDB-30", "CFP-FP", "CALFW", "Adience", "CPLFW", "XQLFW",
                                                "IJB-C"]
    assert len(cfg.recognizers) == 4
    kinds = {("vit" if q.method in ("attn", "vitnt", "vitfiqa", "exfiqa_F", "exfiqa_FW") else
              "score file" if q.scores else "baseline") for q in cfg.qualities}
    assert kinds == {"vit", "baseline", "score file"}
    files = [q for q in cfg.qualities if q.scores]
    assert all(set(q.scores) == {b.name for b in cfg.benchmarks} for q in files)
