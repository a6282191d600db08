"""`reproduce` with ``ray``: embeddings (of files, encoded bytes and aligned crops) and qualities (of files,
channel-swapped ones included) on a local Ray cluster equal the local run, into the same resumable caches."""
import json

import numpy as np
import pytest
import ray
import torch
from torch import nn

from vitfiqa.demo import QUALITY_MODEL
from vitfiqa.eval import synthetic
from vitfiqa.eval.reproduction import reproduce
from vitfiqa.models import export_torchscript

from .test_reproduce_table import prepare_like_extract_bin


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_embeddings_and_qualities_equal_local(local_ray, tmp_path):
    root = tmp_path
    synthetic.write_bin(root / "lfw.bin", n_pairs=12, n_subjects=6)
    prepare_like_extract_bin(root / "lfw.bin", root / "data")
    synthetic.write_ijbc(root / "IJBC", n_subjects=3, templates_per_subject=2)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 5, 4), nn.ReLU(), nn.Conv2d(8, 16, 3, 2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32)).eval()
    export_torchscript(cnn, str(root / "cnn.pt"))
    cfg = {"fmrs": [1e-1], "batch_size": 8,
           "benchmarks": [{"name": "bin", "type": "bin", "path": "lfw.bin"},
                          {"name": "prepared", "type": "pair_list", "data_dir": "data",
                           "list_dir": "data/quality_data/lfw", "ids": "names", "prepared": "crfiqa"},
                          {"name": "IJB-C", "type": "ijbc", "root": "IJBC"}],
           "recognizers": [{"name": "CNN", "model": "cnn.pt"}],
           "qualities": [{"name": "ViT-FIQA", "method": "vitfiqa", "model": str(QUALITY_MODEL)}]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors run torch on 1 thread (1 CPU each): the same kernels, the same bits
    try:
        local = reproduce({**cfg, "out": str(root / "local")}, base=root, progress=False)
    finally:
        torch.set_num_threads(threads)
    dist = reproduce({**cfg, "out": str(root / "ray"), "ray": "local"}, base=root, progress=False)
    assert not local.skipped and not dist.skipped
    cols = ["method", "benchmark", "fr_model", "fmr", "pauc"]
    assert dist.frame[cols].equals(local.frame[cols])
    # the embedding caches hold the same values (the bin's bytes, the prepared files swapped back, IJB-C crops)
    caches = {p.name: np.load(p / "values.npy") for p in (root / "local" / "cache").glob("embeddings-*")}
    for p in (root / "ray" / "cache").glob("embeddings-*"):
        np.testing.assert_array_equal(np.load(p / "values.npy"), caches[p.name])
    assert len(caches) == 3
    # the prepared folder equals the .bin it came from: same pixels, same embeddings, same table
    f = dist.frame.set_index("benchmark").pauc
    assert f["bin"] == f["prepared"]
    # resume: forget some images of one cache; the Ray run computes only those, the values are unchanged
    cache = next(p for p in (root / "ray" / "cache").glob("embeddings-*")
                 if json.loads((p / "meta.json").read_text())["benchmark"] == "IJB-C")
    status = np.load(cache / "status.npy")
    status[::3] = 0
    np.save(cache / "status.npy", status)
    before = np.load(cache / "values.npy").copy()
    again = reproduce({**cfg, "out": str(root / "ray"), "ray": "local"}, base=root, progress=False)
    assert not again.skipped and (np.load(cache / "status.npy") == 1).all()
    # recomputed in other batches (every third image): float32 sums in another order, each of at most 75 terms
    # (the 5x5x3 conv) of O(1) products: |error| <= 75 * 2**-24 * O(1) ~ 5e-6 before the L2 normalisation
    np.testing.assert_allclose(np.load(cache / "values.npy"), before, rtol=0, atol=5e-6)
    kept = np.ones(len(before), bool)
    kept[::3] = False
    np.testing.assert_array_equal(np.load(cache / "values.npy")[kept], before[kept])  # not recomputed
