"""Benchmark loaders on files the tests write themselves, corrupt ones included."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from vitfiqa.eval import (CorruptEntry, Pairs, ijbc_templates, load_bin, load_ijbc_meta, load_lfw_pairs,
                          load_pair_list, score_image_set)


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
    batches = list(ds.batches(batch_size=3))
    idx = np.concatenate([i for i, _ in batches])
    assert 3 not in idx and len(idx) == 7
    assert batches[0][1].shape == (3, 112, 112, 3) and batches[0][1].dtype == np.uint8
    assert ds.errors and ds.errors[0][0] == 3 and "image 3" in ds.errors[0][1]
    strict = load_bin(tmp_path / "lfw.bin", strict=True)
    with pytest.raises(CorruptEntry, match="image 3"):
        list(strict.batches(4))


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


def test_pair_list_layout(tmp_path):
    for i in range(4):
        (tmp_path / f"img{i}.png").write_bytes(png(i, (120, 100)))
    (tmp_path / "image_path_list.txt").write_text("\n".join(f"img{i}.png" for i in range(4)))
    (tmp_path / "pair_list.txt").write_text("0 1 1\n2 3 0\n")
    ds = load_pair_list(tmp_path)
    np.testing.assert_array_equal(ds.pairs.genuine, [True, False])
    _, imgs = next(ds.batches(8))
    assert imgs.shape == (4, 112, 112, 3)  # resized to the face size
    (tmp_path / "pair_list.txt").write_text("0 1 1\n2 x\n")
    with pytest.raises(CorruptEntry, match="line 2"):
        load_pair_list(tmp_path)
    (tmp_path / "pair_list.txt").write_text("0 9 1\n")
    with pytest.raises(ValueError, match="indices"):
        load_pair_list(tmp_path)


def test_lfw_pairs_file(tmp_path):
    for name, n in (("Ann", 2), ("Bob", 1)):
        (tmp_path / name).mkdir()
        for k in range(1, n + 1):
            (tmp_path / name / f"{name}_{k:04d}.jpg").write_bytes(png(k))
    (tmp_path / "pairs.txt").write_text("1 1\nAnn 1 2\nAnn 1 Bob 1\n")
    ds = load_lfw_pairs(tmp_path, tmp_path / "pairs.txt")
    assert len(ds) == 3
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
