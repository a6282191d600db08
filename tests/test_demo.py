"""The embedded demo: shipped model, data from Debian's dataset-fashion-mnist, a small study run."""
import json

import pytest

from vitfiqa.demo.data import DATA_DIR
from vitfiqa.demo.train import ASSET

needs_data = pytest.mark.skipif(not (DATA_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="apt-get install dataset-fashion-mnist")


def test_demo_model_ships_with_package():
    import vitfiqa

    assert ASSET.is_file(), "python -m vitfiqa.demo.train makes it"
    m = vitfiqa.load(ASSET, image_size=(32, 32))
    assert m.info["num_blocks"] == 6 and m.info["has_final_norm"]


@needs_data
def test_demo_study_small(tmp_path):
    from vitfiqa.demo.study import run_demo

    summary = run_demo(tmp_path / "report", n_images=40, n_pairs=4000, log=lambda *a: None)
    for f in ("scores.csv", "correlations.csv", "pauc.csv", "edc.png", "heatmaps.png", "report.md"):
        assert (tmp_path / "report" / f).stat().st_size > 100
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["images"] == 40 and set(saved["spearman"]) == set(summary["spearman"])
    assert len(saved["spearman"]) == 8


def test_demo_data_missing_is_clear(monkeypatch, tmp_path):
    from vitfiqa.demo import data

    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.load_split("test")
