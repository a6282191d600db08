"""Scoring through a local Ray cluster (2 CPUs) gives the same scores as the local pipeline."""
import numpy as np
import pytest
import ray
import torch

from vitfiqa.cli import main
from vitfiqa.distributed import score_with_ray
from vitfiqa.pipeline import score_frame
from vitfiqa.results import read_scores

from .test_pipeline import write_mixed_images

METHODS = ["attn", "vitnt", "vitfiqa", "exfiqa"]
# The columns these methods give on the 4-block test model: EX-FIQA adds its raw exit scores.
KEYS = ["attn", "vitnt", "vitfiqa", "exfiqa_F", "exfiqa_FW"] + [f"exfiqa_exit{d}" for d in range(1, 5)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_mixed_images(tmp_path_factory.mktemp("ray_imgs"), 200, broken={17, 130})


def test_ray_scores_equal_local_scores(local_ray, images, model_cases, loaded, tmp_path):
    case = model_cases["vitfiqa_token-script"]
    # The actors get 1 CPU each here and run torch on 1 thread: score locally on 1 thread too, so that the
    # comparison does not lean on GEMM giving the same bits for any thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = score_frame(loaded("vitfiqa_token-script"), images, METHODS, batch_size=32)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "scores"
    dist = score_with_ray(case.path, images, out, METHODS, batch_size=32, num_actors=2, progress=False)
    assert len(list(out.glob("part-*.csv"))) >= 2  # shards, committed as results arrive
    assert dist["path"].tolist() == images and dist["index"].tolist() == list(range(200))
    assert dist["error"].tolist() == local["error"].tolist()
    assert (dist["error"] != "").sum() == 2
    for k in KEYS:  # identical, not merely close: same batches, same kernels
        np.testing.assert_array_equal(dist[k].to_numpy(), local[k].to_numpy())

    # Resume: lose one shard, re-run: only its images are scored again and the result is unchanged.
    lost = sorted(out.glob("part-*.csv"))[0]
    lost.unlink()
    again = score_with_ray(case.path, images, out, METHODS, batch_size=32, num_actors=2, progress=False)
    assert again.equals(dist)
    # The same table, finished by the local path: one table for both (and the same bits).
    lost = sorted(out.glob("part-*.csv"))[-1]
    lost.unlink()
    torch.set_num_threads(1)
    try:
        mixed = score_frame(loaded("vitfiqa_token-script"), images, METHODS, batch_size=32, out=out)
    finally:
        torch.set_num_threads(threads)
    assert mixed.equals(dist)


def test_cli_ray_flag(local_ray, images, model_cases, tmp_path):
    out = tmp_path / "cli_scores.parquet"
    argv = ["-q", "score", "--model", model_cases["timm-script"].path, "--images", str(images[0].rsplit("/", 1)[0]),
            "--image-size", "32", "--methods", "attn,vitnt", "--batch-size", "64", "--out", str(out), "--ray"]
    assert main(argv) == 0
    import pandas as pd

    frame = pd.read_parquet(out)  # the export; the table itself is cli_scores.parquet.table/
    assert frame["index"].tolist() == list(range(200)) and frame["vitnt"].notna().sum() == 198
    assert read_scores(tmp_path / "cli_scores.parquet.table").equals(frame)
    # A different method set cannot be mixed into the same folder.
    other = list(argv)
    other[other.index("attn,vitnt")] = "attn"
    assert main(other) == 2


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(sources=[]), ValueError, "no image paths"),
    (dict(methods=["bogus"]), ValueError, "unknown method"),
    (dict(model="missing.pt"), FileNotFoundError, "model file not found"),
    (dict(model=b"junk"), ValueError, "could not load a TorchScript model"),
    (dict(heatmaps=True), ValueError, "not collected through Ray"),
    # an option of a method that is requested (issue 10: options of methods not requested are ignored)
    (dict(methods=["exfiqa"], exit_normalization="zscore"), ValueError, "depend on batching"),
    (dict(device="cuda"), RuntimeError, "no GPUs"),
    (dict(methods=["exfiqa"]), (ValueError, RuntimeError), "quality"),
    (dict(vitnt_weighting="bogus"), (ValueError, RuntimeError), "weighting"),
])
def test_ray_rejects_bad_input(kwargs, exc, msg, local_ray, images, model_cases, tmp_path):
    kwargs = {"model": model_cases["insightface-script"].path, "sources": images[:4],
              "out_dir": tmp_path / "o", "progress": False, **kwargs}
    with pytest.raises(exc, match=msg):
        score_with_ray(**kwargs)


def test_relative_paths_are_resolved_on_the_driver(local_ray, images, model_cases, tmp_path, monkeypatch):
    import os

    folder = os.path.dirname(images[0])
    monkeypatch.chdir(folder)
    rel = [os.path.basename(p) for p in images[:3]]
    frame = score_with_ray(model_cases["timm-script"].path, rel, tmp_path / "rel", ["attn"], image_size=(32, 32),
                           progress=False)
    assert frame["path"].tolist() == images[:3] and (frame["error"] == "").all()


def test_ray_reads_the_input_contract_and_channel_order(local_ray, images, tmp_path):
    """The driver resolves the model's recorded contract (32x32, BGR, its normalisation) once and every actor
    uses it; an explicit channel_order overrides the record, as in the local pipeline."""
    import vitfiqa
    from vitfiqa.models import ViTFIQA, export_torchscript

    from .models.cases import spread

    torch.manual_seed(0)
    model = spread(ViTFIQA(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_features=16))
    path = export_torchscript(model, str(tmp_path / "bgr.pt"), input_contract={
        "image_size": [32, 32], "channel_order": "bgr", "normalization": {"mean": [0.4, 0.5, 0.6], "std": [0.3] * 3}})
    paths = images[:12]
    for order in (None, "rgb"):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            local = score_frame(vitfiqa.load(path, channel_order=order), paths, ["attn", "vitfiqa"], batch_size=4)
        finally:
            torch.set_num_threads(threads)
        dist = score_with_ray(path, paths, tmp_path / f"o_{order}", ["attn", "vitfiqa"], batch_size=4,
                              channel_order=order, num_actors=1, progress=False)
        for k in ("attn", "vitfiqa"):
            np.testing.assert_array_equal(dist[k].to_numpy(), local[k].to_numpy())
    assert not np.allclose(dist["attn"], score_frame(vitfiqa.load(path), paths, ["attn"], batch_size=4)["attn"])


def test_reproduce_qualities_on_ray_equal_local(local_ray, model_cases, tmp_path):
    """`reproduce` with ray = "local": the vitfiqa qualities of an image-file benchmark are scored by
    vitfiqa.distributed; the table equals the local run's."""
    from vitfiqa.eval import synthetic
    from vitfiqa.eval.reproduction import reproduce

    pairs = synthetic.write_lfw_style(tmp_path / "xq", n_subjects=4, per_subject=3, n_pairs=16)
    vit = model_cases["insightface-script"].path
    cfg = {"fmrs": [0.1], "batch_size": 8,
           "benchmarks": [{"name": "XQ", "type": "pairs", "root": str(tmp_path / "xq"), "pairs": str(pairs)}],
           "recognizers": [{"name": "ViT", "model": vit, "flip": "none"}],
           "qualities": [{"name": "ATTN", "method": "attn", "model": vit}]}
    local = reproduce(dict(cfg, out=str(tmp_path / "local")), progress=False)
    threads = torch.get_num_threads()
    on_ray = reproduce(dict(cfg, out=str(tmp_path / "ray"), ray="local"), progress=False)
    torch.set_num_threads(threads)
    assert list((tmp_path / "ray" / "cache").glob("ray-quality-*.table"))
    np.testing.assert_allclose(on_ray.frame.pauc.values, local.frame.pauc.values, rtol=1e-6)


def test_ray_scores_bytes_as_the_local_path_does(local_ray, images, model_cases, loaded, tmp_path):
    """Encoded bytes with ids travel in the Ray Data rows: the same table as the local pipeline on the same bytes
    (a corrupt item a NaN row with its reason), and one table for both paths."""
    from pathlib import Path

    from vitfiqa.results import ScoreTable

    import io

    from PIL import Image

    sources = [Path(p).read_bytes() for p in images[:40]]
    sources[3] = sources[3][:40]  # cut short
    # A BMP whose top row is black ends in NUL bytes, which must arrive as they are (fixed-width numpy bytes
    # would drop them and cut the image short).
    pixels = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    pixels[:2] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="BMP")
    sources[4] = buf.getvalue()
    assert sources[4].endswith(b"\0" * 64)
    ids = [f"db/{i:03d}" for i in range(len(sources))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actors (see test_ray_scores_equal_local_scores)
    try:
        local = score_frame(loaded("insightface-script"), sources, ["attn", "vitnt"], ids=ids, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "bytes.table"
    dist = score_with_ray(model_cases["insightface-script"].path, sources, out, ["attn", "vitnt"], ids=ids,
                          batch_size=8, num_actors=2, progress=False)
    assert dist["path"].tolist() == ids and dist["error"].tolist() == local["error"].tolist()
    assert [i for i, e in enumerate(dist["error"]) if e] == [3, 17]
    for k in ("attn", "vitnt"):
        np.testing.assert_array_equal(dist[k].to_numpy(), local[k].to_numpy())
    assert ScoreTable.open(out).run["sources"] == "bytes"
    # Finished locally after a lost shard: the same table.
    sorted(out.glob("part-*.csv"))[-1].unlink()
    torch.set_num_threads(1)
    try:
        mixed = score_frame(loaded("insightface-script"), sources, ["attn", "vitnt"], ids=ids, batch_size=8, out=out)
    finally:
        torch.set_num_threads(threads)
    assert mixed.equals(dist)
    with pytest.raises(ValueError, match="encoded bytes need ids="):
        score_with_ray(model_cases["insightface-script"].path, sources, tmp_path / "x", ["attn"], progress=False)


def test_ray_detect_equals_local(local_ray, tmp_path_factory, tmp_path):
    """detect=True / all_faces through Ray: the driver decides the rows, actors detect and align; the table
    equals the local one."""
    pytest.importorskip("skimage")
    import vitfiqa
    from vitfiqa.demo import RECOGNIZER
    from vitfiqa.detect import FACE_COLUMNS
    from vitfiqa.pipeline import score_frame

    from .face_photos import make_photos

    root = make_photos(tmp_path_factory.mktemp("photos"))
    files = [str(root / n) for n in ("group.png", "coffee.jpg", "astronaut.jpg", "tiny.png")]
    model = vitfiqa.load()
    for run in ({"detect": True}, {"detect": True, "all_faces": True}):
        remote = score_with_ray(RECOGNIZER, files, tmp_path / f"t{len(run)}", batch_size=2, num_actors=1,
                                progress=False, run=run)
        local = score_frame(model, files, run=run, batch_size=2)
        assert list(remote.path) == list(local.path)
        assert list(remote.error) == list(local.error)
        for k in ("attn", *FACE_COLUMNS):
            np.testing.assert_allclose(remote[k].to_numpy(float), local[k].to_numpy(float), rtol=1e-6)
