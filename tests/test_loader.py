"""The one image loader (vitfiqa.loader): paths or encoded bytes in, the same uint8 batches out, whichever way
they are decoded; and every way from images to a model (file scoring, .bin benchmarks, embeddings) through it.

The reference for the numbers is written out here: Pillow decode + bilinear resize + (x/255 - 0.5)/0.5."""
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitfiqa
import vitfiqa.loader as loader_module
from vitfiqa.eval import extract_embeddings, load_bin, score_image_set
from vitfiqa.loader import IMAGE_EXTENSIONS, ImageLoader, is_image_file, to_model_input
from vitfiqa.preprocess import denormalize_to_uint8, normalize_uint8
from vitfiqa.recognizer import Recognizer

from .test_pipeline import write_mixed_images

BAD_BYTES = {3: b"\x00garbage", 4: b"\xff\xd8 truncated JPEG"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_mixed_images(tmp_path_factory.mktemp("imgs"), 23, broken={5, 6})


def as_tuples(batches):
    return [(b.start, b.ids, b.ok, b.errors, None if b.images is None else b.images.numpy().copy())
            for b in batches]


def assert_same_batches(a, b, names=True):
    assert len(a) == len(b)
    for x, y in zip(as_tuples(a), as_tuples(b)):
        assert x[0] == y[0] and x[2] == y[2] and x[3].keys() == y[3].keys()
        if names:
            assert x[1] == y[1] and x[3] == y[3]
        assert (x[4] is None and y[4] is None) or np.array_equal(x[4], y[4])


def reference_uint8(item, size=(112, 112)) -> np.ndarray:
    """Pillow alone: open, RGB, bilinear resize (the loader's contract for 8-bit images)."""
    src = io.BytesIO(item) if isinstance(item, bytes) else item
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))


def reference_input(arrays) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


def test_batches_and_errors(images):
    batches = list(ImageLoader(images, batch_size=10, workers=2))
    assert [b.start for b in batches] == [0, 10, 20] and len(ImageLoader(images, 10)) == 3
    first = batches[0]
    assert first.ok == [0, 1, 2, 3, 4, 7, 8, 9] and set(first.errors) == {5, 6}
    assert "cannot read image" in first.errors[5]
    assert first.images.dtype == torch.uint8 and tuple(first.images.shape) == (8, 112, 112, 3)
    assert first.ids == images[:10]
    for j, pos in enumerate(first.ok):
        np.testing.assert_array_equal(first.images[j].numpy(), reference_uint8(images[pos]))


def test_bytes_give_the_same_batches_as_paths(images):
    blobs = [Path(p).read_bytes() for p in images]
    from_paths = list(ImageLoader(images, batch_size=6, workers=2))
    from_bytes = list(ImageLoader(blobs, batch_size=6, workers=2))
    assert_same_batches(from_paths, from_bytes, names=False)
    assert from_bytes[0].ids[:2] == ["<bytes #0>", "<bytes #1>"]  # named by position unless ids are given
    named = list(ImageLoader(blobs, batch_size=6, workers=2, ids=[Path(p).name for p in images], start=100))
    assert named[1].start == 106 and named[1].ids == [Path(p).name for p in images[6:12]]
    with pytest.raises(ValueError, match="ids for"):
        ImageLoader(blobs, ids=["a"])


def test_threads_and_processes_give_identical_batches(images):
    blobs = [Path(p).read_bytes() for p in images]
    for sources in (images, blobs):
        threads = list(ImageLoader(sources, batch_size=7, workers=2))
        processes = list(ImageLoader(sources, batch_size=7, workers=3, processes=True))
        assert_same_batches(threads, processes)
    # The pool is kept for the next call (a Ray actor scores many batches).
    again = list(ImageLoader(images[:9], batch_size=4, workers=3, processes=True))
    assert [b.ok for b in again] == [[0, 1, 2, 3], [0, 3], [0]]  # 5 and 6 are unreadable


def test_prefetch_and_workers_do_not_change_order(images):
    base = list(ImageLoader(images, batch_size=4, workers=1, prefetch=1))
    for workers, prefetch in ((3, 1), (1, 5), (4, 8)):
        assert_same_batches(base, list(ImageLoader(images, batch_size=4, workers=workers, prefetch=prefetch)))
    skipped = list(ImageLoader(images, batch_size=4, workers=2, prefetch=3, skip={4, 12}))
    assert [b.start for b in skipped] == [0, 8, 16, 20]
    assert_same_batches([b for b in base if b.start not in (4, 12)], skipped)


def test_bad_bytes_are_skips_with_a_reason(tmp_path):
    blobs = [Path(p).read_bytes() for p in write_mixed_images(tmp_path, 6)]
    for i, bad in BAD_BYTES.items():
        blobs[i] = bad
    (batch,) = ImageLoader(blobs, batch_size=6, workers=2)
    assert batch.ok == [0, 1, 2, 5] and sorted(batch.errors) == [3, 4]
    assert all("cannot read image" in e for e in batch.errors.values())
    (none,) = ImageLoader([b"", b"\x89PNG\r\n"], batch_size=2, workers=1)
    assert none.images is None and sorted(none.errors) == [0, 1]


def test_loader_rejects_bad_settings(images):
    for kwargs, msg in ((dict(batch_size=0), "batch_size"), (dict(prefetch=0), "prefetch"),
                        (dict(workers=0), "workers"), (dict(size=None), "size")):
        with pytest.raises(ValueError, match=msg):
            ImageLoader(images, **kwargs)


def write_bin(path, n_pairs=5):
    """A .bin whose images need resizing, with grey and RGBA entries and two that cannot be decoded."""
    blobs = []
    for i, p in enumerate(write_mixed_images(path.parent / "src", 2 * n_pairs)):
        blobs.append(BAD_BYTES.get(i, Path(p).read_bytes()))
    with open(path, "wb") as f:
        pickle.dump((blobs, [i % 2 == 0 for i in range(n_pairs)]), f)
    return blobs


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts the sources decoded by the loader's workers (threads: the module attribute is looked up per call)."""
    calls = []
    real = loader_module.decode_items

    def counting(items, *args):
        calls.extend(items)
        return real(items, *args)

    monkeypatch.setattr(loader_module, "decode_items", counting)
    return calls


def test_bin_scoring_goes_through_the_loader_with_the_reference_numbers(tmp_path, loaded, decode_calls):
    blobs = write_bin(tmp_path / "s.bin")
    ds = load_bin(tmp_path / "s.bin")
    model = loaded("insightface-script")
    got = score_image_set(model, ds, methods=("attn", "vitnt"), batch_size=4, progress=False)
    assert len(decode_calls) == len(blobs)  # every image decoded once, by the loader
    # Batches of 4 are images [0..3], [4..7], [8, 9]; the readable ones of each are scored together, as before
    # the loader (main's path: decoded uint8 batches through QualityModel.score's own preprocessing).
    for group in ([0, 1, 2], [5, 6, 7], [8, 9]):
        ref = model.score(reference_input([reference_uint8(blobs[i]) for i in group]), methods=("attn", "vitnt"),
                          preprocess=False).numpy()
        for k in ("attn", "vitnt"):
            np.testing.assert_array_equal(got[k][group], ref[k])
    for k in ("attn", "vitnt"):
        assert np.isnan(got[k][list(BAD_BYTES)]).all()
    assert sorted(i for i, _ in ds.errors) == sorted(BAD_BYTES)


def test_embeddings_go_through_the_loader_with_the_reference_numbers(tmp_path, model_cases, decode_calls):
    blobs = write_bin(tmp_path / "s.bin")
    ds = load_bin(tmp_path / "s.bin")
    rec = Recognizer(model_cases["insightface-script"].path, flip="concat")
    out = list(extract_embeddings(rec, ds, batch_size=4))
    assert len(decode_calls) == len(blobs)
    assert [list(b.indices) for b, _ in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [sorted(b.errors) for b, _ in out] == [[3], [4], []]
    m = vitfiqa.load(model_cases["insightface-script"].path)
    for b, emb in out:
        arrays = [reference_uint8(blobs[i]) for i in b.ok]
        flipped = [np.ascontiguousarray(a[:, ::-1]) for a in arrays]
        e, f = (m.forward(reference_input(a), preprocess=False).detach().numpy() for a in (arrays, flipped))
        unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
        np.testing.assert_allclose(emb, np.concatenate([unit(e), unit(f)], axis=1), rtol=1e-5, atol=1e-6)


def test_to_model_input_is_the_one_normaliser(loaded):
    u = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8))
    model = loaded("insightface-script")
    np.testing.assert_array_equal(to_model_input(u, model).numpy(), reference_input(list(u.numpy())).numpy())
    np.testing.assert_array_equal(to_model_input(u.numpy(), model).numpy(), to_model_input(u, model).numpy())
    norm = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.25]}
    for order in ("rgb", "bgr"):
        back = denormalize_to_uint8(normalize_uint8(u, channel_order=order, normalization=norm), order, norm)
        assert (back.int() - u.int()).abs().max() <= 1  # truncation after float arithmetic, as display does


def test_one_extension_list_for_the_cli_and_training(tmp_path):
    from vitfiqa.cli import _image_list
    from vitfiqa.training import FolderDataset

    (tmp_path / "id0").mkdir()
    for ext in (".JPG", ".tiff", ".txt", ".npy"):
        Image.new("RGB", (8, 8)).save(tmp_path / "id0" / f"x{ext}", format="PNG")
    found = sorted(Path(p).name for p in _image_list(str(tmp_path)))
    assert found == ["x.JPG", "x.tiff"] == sorted(p.name for p, _ in FolderDataset(tmp_path, size=(8, 8)).items)
    assert all(is_image_file(f"a{e.upper()}") for e in IMAGE_EXTENSIONS)
