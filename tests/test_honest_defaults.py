"""Honest defaults: the embedded stand-in says what it is when it scores files, resized (not aligned) inputs are
said once per run, and the input contract is checked against the model before any results table exists."""
import warnings

import numpy as np
import pytest
from PIL import Image

import vitfiqa
from vitfiqa.cli import main
from vitfiqa.pipeline import score_frame, score_files


def write(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def messages(record, text):
    return [str(w.message) for w in record if text in str(w.message)]


def test_stand_in_and_resize_warnings_once_per_run(tmp_path):
    paths = write(tmp_path / "imgs", [(112, 112), (100, 140), (112, 112), (90, 90), (120, 80)])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        frame = score_frame(vitfiqa.load(), paths, "attn", run=dict(batch_size=2))
    assert frame["error"].eq("").all()
    assert len(messages(rec, "synthetic faces")) == 1 and len(messages(rec, "resized")) == 1
    assert "vitfiqa.load('cvlface_vit_b', checkpoint=" in messages(rec, "synthetic faces")[0]
    # a model of the user's own, on aligned crops at its size: no warning at all
    square = write(tmp_path / "sq", [(112, 112)] * 3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        score_frame(vitfiqa.load(vitfiqa.models.FaceViT(embed_dim=32, depth=2, num_heads=4, num_features=16)),
                    square, "attn")
    assert not messages(rec, "synthetic faces") and not messages(rec, "resized")


def test_cli_stand_in_warning_is_one_line(tmp_path, capsys):
    write(tmp_path / "imgs", [(112, 112), (64, 80)])
    assert main(["-q", "score", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "s.csv")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln for ln in err if "synthetic faces" in ln][0].startswith("vitfiqa: warning: the embedded stand-in")
    assert sum("synthetic faces" in ln for ln in err) == 1 and sum("resized" in ln for ln in err) == 1


def test_wrong_image_size_leaves_nothing_behind(tmp_path, capsys):
    write(tmp_path / "imgs", [(112, 112)] * 3)
    out = tmp_path / "s.csv"
    args = ["-q", "score", "--images", str(tmp_path / "imgs"), "--out", str(out)]
    assert main(args + ["--image-size", "96"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not take 3 x 96 x 96 images" in err[0], err
    assert not (tmp_path / "s.csv.table").exists() and not out.exists()
    assert main(args) == 0  # the corrected run is not blocked by anything
    assert out.exists()


def test_wrong_image_size_api(tmp_path):
    paths = write(tmp_path / "imgs", [(112, 112)] * 2)
    model = vitfiqa.load(None, dict(image_size=(96, 96)))
    with pytest.raises(ValueError, match=r"does not take 3 x 96 x 96 images \(the size as given\)"):
        next(score_files(model, paths, "attn", out=tmp_path / "t"))
    assert not (tmp_path / "t").exists()
