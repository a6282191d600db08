"""Benchmark loaders on files the tests write themselves, corrupt ones included."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from vitfiqa.eval import (CorruptEntry, Pairs, aggregate_templates, ijbc_templates, load_adience, load_bin,
                          load_ijbc, load_ijbc_meta, load_lfw_pairs, load_pair_list, score_image_set, template_quality)


def png(seed, size=(112, 112)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_bin(path, n_pairs=4, corrupt=()):
    bins = [b"\x00garbage" if i in corrupt else png(i) for i in range(2 * n_pairs)]
    issame = [i % 2 == 0 for i in range(n_pairs)]
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f)
    return issame


def test_bin_roundtrip_and_corrupt_entry(tmp_path):
    issame = write_bin(tmp_path / "lfw.bin", corrupt={3})
    ds = load_bin(tmp_path / "lfw.bin")
    assert len(ds) == 8 and ds.name == "lfw"
    np.testing.assert_array_equal(ds.pairs.a, [0, 2, 4, 6])
    np.testing.assert_array_equal(ds.pairs.genuine, issame)
    batches = list(ds.iter_batches(batch_size=3))
    idx = np.concatenate([b.ok for b in batches])
    assert 3 not in idx and len(idx) == 7
    assert batches[1].errors and 3 in batches[1].errors and list(batches[1].indices) == [3, 4, 5]
    assert batches[0].images.shape == (3, 112, 112, 3) and batches[0].images.dtype == np.uint8
    assert ds.errors and ds.errors[0][0] == 3 and "image 3" in ds.errors[0][1]
    strict = load_bin(tmp_path / "lfw.bin", strict=True)
    with pytest.raises(CorruptEntry, match="image 3"):
        list(strict.iter_batches(4))


def test_bin_bad_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"not a pickle")
    with pytest.raises(CorruptEntry, match="not an insightface .bin"):
        load_bin(tmp_path / "x.bin")
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump(([png(0)] * 3, [True, False]), f)
    with pytest.raises(CorruptEntry, match="expected twice as many"):
        load_bin(tmp_path / "odd.bin")
    with pytest.raises(FileNotFoundError):
        load_bin(tmp_path / "missing.bin")


def test_pair_list_official_layout(tmp_path):
    """CR-FIQA layout: image paths relative to the data folder, pair ids are image names without extension."""
    data = tmp_path / "data"
    lists = data / "quality_data" / "lfw"
    (lists / "images").mkdir(parents=True)
    names = ["p_1_img_0", "p_1_img_1", "p_2_img_2", "p_3_img_3"]
    for i, n in enumerate(names):
        (lists / "images" / f"{n}.jpg").write_bytes(png(i, (120, 100)))
    (lists / "image_path_list.txt").write_text("\n".join(f"quality_data/lfw/images/{n}.jpg" for n in names) + "\n")
    (lists / "pair_list.txt").write_text("p_1_img_0 p_1_img_1 1\np_2_img_2 p_3_img_3 0\np_1_img_1 p_3_img_3 0\n")
    ds = load_pair_list(data, lists)
    np.testing.assert_array_equal(ds.pairs.a, [0, 2, 1])
    np.testing.assert_array_equal(ds.pairs.b, [1, 3, 3])
    np.testing.assert_array_equal(ds.pairs.genuine, [True, False, False])
    assert ds.keys[0] == "quality_data/lfw/images/p_1_img_0.jpg"
    b = next(ds.iter_batches(8))
    assert list(b.ok) == [0, 1, 2, 3] and b.images.shape == (4, 112, 112, 3) and not ds.errors  # every path resolves
    (lists / "pair_list.txt").write_text("p_1_img_0 p_9_img_9 1\n")
    with pytest.raises(CorruptEntry, match="not image names.*p_9_img_9"):
        load_pair_list(data, lists)
    # The old index layout is refused in auto mode (never misread), accepted when stated.
    (lists / "pair_list.txt").write_text("0 1 1\n2 3 0\n")
    with pytest.raises(CorruptEntry, match="ids='indices'"):
        load_pair_list(data, lists)
    np.testing.assert_array_equal(load_pair_list(data, lists, ids="indices").pairs.b, [1, 3])
    (lists / "pair_list.txt").write_text("0 1 1\n2 x\n")
    with pytest.raises(CorruptEntry, match="line 2"):
        load_pair_list(data, lists)


def test_pair_list_ijbc_template_ids_refused(tmp_path):
    """The official IJB-C list holds template ids, smaller than the image count and numeric like the image
    names: read as image names it would load silently with wrong pairs."""
    (tmp_path / "image_path_list.txt").write_text("\n".join(f"IJBC/loose_crop/{i}.jpg" for i in range(1, 11)))
    (tmp_path / "pair_list.txt").write_text("1 2 1\n3 7 0\n")
    with pytest.raises(CorruptEntry, match="template ids"):
        load_pair_list(tmp_path)
    assert load_pair_list(tmp_path, ids="names").pairs.a[1] == 2  # an explicit choice is honoured


def test_pairs_files_with_bom(tmp_path):
    (tmp_path / "Ann").mkdir()
    (tmp_path / "pairs.txt").write_bytes("\ufeff1 1\nAnn 1 2\n".encode("utf-8"))
    ds = load_lfw_pairs(tmp_path, tmp_path / "pairs.txt")
    assert ds.keys == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"] and ds.pairs.genuine.tolist() == [True]
    (tmp_path / "image_path_list.txt").write_bytes("\ufeffa.jpg\nb.jpg\n".encode("utf-8"))
    (tmp_path / "pair_list.txt").write_bytes("\ufeffa b 1\n".encode("utf-8"))
    assert load_pair_list(tmp_path).pairs.genuine.tolist() == [True]


def test_adience_fold_files(tmp_path):
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
    rows0 = ["30601258@N03\t10399646885_67c7d20df9_o.jpg\t1\t(25, 32)\tf\t0\t414\t1086\t1383\t-115\t30\t17",
             "30601258@N03\t10424815813_e94629b1ec_o.jpg\t1\t(25, 32)\tm\t301\t105\t640\t641\t0\t0\t94",
             "30601258@N03\t10437979845_5985be4b26_o.jpg\t2\t(8, 12)\tf\t2395\t876\t771\t771\t175\t-30\t74"]
    rows1 = ["7153718@N04\t11326163213_8d7ae6e89e_o.jpg\t3\t35\tf\t1\t2\t3\t4\t5\t6\t7"]
    (tmp_path / "fold_0_data.txt").write_text(header + "\n" + "\n".join(rows0) + "\n")
    (tmp_path / "fold_1_data.txt").write_text(header + "\n" + "\n".join(rows1) + "\n")
    ds = load_adience(tmp_path)
    assert len(ds) == 4 and len(ds.pairs) == 6 and ds.pairs.n_genuine == 1
    assert ds.keys[0] == "aligned/30601258@N03/landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg"
    assert ds.sources[3] == str(tmp_path / "aligned/7153718@N04/landmark_aligned_face.3.11326163213_8d7ae6e89e_o.jpg")
    assert load_adience(tmp_path, faces="faces").keys[0].startswith("faces/30601258@N03/coarse_tilt_aligned_face.1.")
    (tmp_path / "fold_1_data.txt").write_text("user_id original_image face_id\n7 a.jpg 3\n")  # spaces, not tabs
    with pytest.raises(CorruptEntry, match="not an Adience fold file"):
        load_adience(tmp_path)


def test_lfw_pairs_file(tmp_path):
    for name, n in (("Ann", 2), ("Bob", 1)):
        (tmp_path / name).mkdir()
        for k in range(1, n + 1):
            (tmp_path / name / f"{name}_{k:04d}.jpg").write_bytes(png(k))
    (tmp_path / "pairs.txt").write_text("1 1\nAnn 1 2\nAnn 1 Bob 1\n")
    ds = load_lfw_pairs(tmp_path, tmp_path / "pairs.txt")
    assert len(ds) == 3 and ds.sources[2] == str(tmp_path / "Bob" / "Bob_0001.jpg")
    np.testing.assert_array_equal(ds.pairs.genuine, [True, False])
    np.testing.assert_array_equal(ds.pairs.a, [0, 0])
    np.testing.assert_array_equal(ds.pairs.b, [1, 2])


def test_all_pairs():
    p = Pairs.all_pairs(["a", "a", "b", "a"])
    assert len(p) == 6 and p.n_genuine == 3


def test_ijbc_meta_and_templates(tmp_path):
    (tmp_path / "ijbc_face_tid_mid.txt").write_text(
        "1.jpg 10 100\n2.jpg 10 100\n3.jpg 10 101\n4.jpg 20 200\n5.jpg 30 300\n")
    (tmp_path / "ijbc_template_pair_label.txt").write_text("10 20 0\n10 30 1\n")
    meta = load_ijbc_meta(tmp_path)
    np.testing.assert_array_equal(meta.template_ids, [10, 20, 30])
    np.testing.assert_array_equal(meta.pairs.b, [1, 2])
    np.testing.assert_array_equal(meta.pairs.genuine, [False, True])
    rng = np.random.default_rng(0)
    feats, q = rng.normal(size=(5, 4)), rng.random(5)
    tids, tf, tq = ijbc_templates(feats, q, meta.template, meta.media)
    # Template 10: media 100 = mean(img 1, 2), media 101 = img 3; sum, then L2-normalise.
    expected = (feats[0] + feats[1]) / 2 + feats[2]
    np.testing.assert_allclose(tf[0], expected / np.linalg.norm(expected), rtol=1e-6)
    np.testing.assert_allclose(tq, [q[:3].min(), q[3], q[4]])
    (tmp_path / "ijbc_template_pair_label.txt").write_text("10 99 0\n")
    with pytest.raises(CorruptEntry, match="template 99"):
        load_ijbc_meta(tmp_path)


def test_score_image_set_marks_unreadable(tmp_path, model_cases):
    import vitfiqa

    write_bin(tmp_path / "agedb.bin", n_pairs=3, corrupt={1})
    ds = load_bin(tmp_path / "agedb.bin")
    m = vitfiqa.load(model_cases["insightface-script"].path)
    q = score_image_set(m, ds, methods=("attn",), batch_size=4, progress=False)
    assert np.isnan(q["attn"][1]) and np.isfinite(np.delete(q["attn"], 1)).all()


def test_aggregate_templates_matches_per_template_loop():
    """Chunked aggregation (memory-mapped features at IJB-C scale) equals the official per-template loop."""
    rng = np.random.default_rng(3)
    n, d = 400, 8
    template = rng.integers(0, 30, n)
    media = rng.integers(0, 5, n)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    det = rng.random(n)
    valid = rng.random(n) > 0.05
    tids, tf = aggregate_templates(feats, template, media, weights=det, valid=valid, chunk=37)
    for k, t in enumerate(tids):
        sel = (template == t) & valid
        medias = [feats[sel & (media == m)] * det[sel & (media == m)][:, None] for m in np.unique(media[sel])]
        if not medias:
            assert np.isnan(tf[k]).all()
            continue
        s = np.sum([x.mean(0) for x in medias], axis=0)
        np.testing.assert_allclose(tf[k], s / np.linalg.norm(s), rtol=1e-5, atol=1e-6)
    q = rng.random(n)
    q[~valid] = np.nan
    tq = template_quality(q, template)
    for k, t in enumerate(tids):
        vals = q[(template == t) & valid]
        assert (np.isnan(tq[k]) and len(vals) == 0) or tq[k] == vals.min()


def test_ijbc_release_layout_with_landmarks(tmp_path):
    from vitfiqa.align import ARCFACE_TEMPLATE, FaceCrop

    (tmp_path / "meta").mkdir()
    (tmp_path / "loose_crop").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(1, 5):
        img = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "loose_crop" / f"{i}.jpg")
        pts = ARCFACE_TEMPLATE * 1.1 + [5.0 + i, 8.0]
        lines.append(f"{i}.jpg " + " ".join(f"{v:.2f}" for v in pts.reshape(-1)) + f" {0.5 + i / 10:.2f}")
    (tmp_path / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lines[::-1]) + "\n")  # order differs
    (tmp_path / "meta" / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 10\n2.jpg 1 11\n3.jpg 2 20\n4.jpg 3 30\n")
    (tmp_path / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 1\n1 3 0\n")
    ds = load_ijbc(tmp_path)
    assert ds.keys == ["loose_crop/1.jpg", "loose_crop/2.jpg", "loose_crop/3.jpg", "loose_crop/4.jpg"]
    assert isinstance(ds.sources[0], FaceCrop) and str(ds.sources[0]) == str(tmp_path / "loose_crop" / "1.jpg")
    np.testing.assert_allclose(ds.templates.detector_scores, [0.6, 0.7, 0.8, 0.9])
    np.testing.assert_array_equal(ds.templates.ids, [1, 2, 3])
    np.testing.assert_array_equal(ds.pairs.b, [1, 2])
    assert next(ds.iter_batches(4)).images.shape == (4, 112, 112, 3)
    plain = load_ijbc(tmp_path, align=False)
    assert plain.sources[0] == str(tmp_path / "loose_crop" / "1.jpg")
    (tmp_path / "meta" / "ijbc_name_5pts_score.txt").write_text(lines[0] + "\n")
    with pytest.raises(CorruptEntry, match="no landmarks for 3 images"):
        load_ijbc(tmp_path)


class _Payload:
    """What an attacker would put in a .bin: unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("where", ["top", "image", "issame"])
def test_malicious_bin_runs_no_code(tmp_path, protocol, where):
    from vitfiqa.eval import UnsafeBinFile

    marker = tmp_path / "pwned"
    images, issame = [png(0), png(1)], [True]
    payload = _Payload(marker)
    obj = {"top": payload, "image": ([png(0), payload], issame), "issame": (images, [payload])}[where]
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    with pytest.raises(UnsafeBinFile, match="refused: the .bin asks for (posix|os|nt).system"):
        load_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    # NumPy objects other than bools are refused by the stand-ins, before NumPy sees their data.
    with open(tmp_path / "scalar.bin", "wb") as f:
        pickle.dump((images, [np.int64(1)]), f, protocol=protocol)
    with pytest.raises(UnsafeBinFile, match="NumPy dtype 'i8'"):
        load_bin(tmp_path / "scalar.bin")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_bin_what_insightface_writes_loads(tmp_path, protocol):
    """Lists and tuples of bytes, Python bools and NumPy bool arrays, at every pickle protocol (protocol 2
    is what Python 2's insightface scripts wrote; Python 3 writes bytes through _codecs.encode there)."""
    images = [png(i) for i in range(6)]
    for issame in ([True, False, True], np.array([True, False, True]), (True, False, True),
                   [np.bool_(True), np.bool_(False), np.bool_(True)]):
        with open(tmp_path / "ok.bin", "wb") as f:
            pickle.dump((tuple(images), issame), f, protocol=protocol)
        ds = load_bin(tmp_path / "ok.bin")
        np.testing.assert_array_equal(ds.pairs.genuine, [True, False, True])
        assert ds.sources == images


@pytest.mark.parametrize("obj, msg", [
    (([b"a", b"b"], np.array([1], dtype=np.int64)), "only bool arrays"),
    (([b"a", b"b"], np.zeros((1, 1), dtype=bool)), "1-D bool array"),
    (([b"a", 3], [True]), "list of encoded image bytes"),
    (([b"a", b"b"], [1]), "list of bools"),
    ((b"a", b"b", [True]), "expected \\(images, issame\\)"),
])
def test_bin_wrong_structure_is_refused(tmp_path, obj, msg):
    with open(tmp_path / "w.bin", "wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(CorruptEntry, match=msg):
        load_bin(tmp_path / "w.bin")
