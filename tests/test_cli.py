"""The command line: scoring with resume, clear one-line errors, inspect, demo."""
import csv
import io

import numpy as np
import pytest
from PIL import Image

from vitfiqa.cli import main


def write_images(folder, n, broken=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        if i in broken:
            p.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(p)
    return folder


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_folder_resume_and_unreadable(tmp_path, model_cases, caplog):
    model = model_cases["insightface-script"].path
    imgs = write_images(tmp_path / "imgs", 5, broken={2})
    out = tmp_path / "scores.csv"
    args = ["-q", "score", "--model", model, "--images", str(imgs), "--out", str(out), "--batch-size", "2",
            "--heatmaps", str(tmp_path / "hm")]
    assert main(args) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "path", "attn", "vitnt", "error"]
    assert [r["path"].endswith(f"img{i:02d}.png") and r["index"] == str(i) for i, r in enumerate(rows)] == [True] * 5
    assert rows[2]["error"] and rows[2]["attn"] == "nan"  # one schema: NaN for a failed image, as in Python
    assert all(float(r["vitnt"]) > 0 for i, r in enumerate(rows) if i != 2)
    assert len(list((tmp_path / "hm").glob("*.attn.png"))) == 4
    # Interrupted run: lose the shard of the last batch, re-run: only it is scored again; same export.
    table = tmp_path / "scores.csv.table"
    last = sorted(table.glob("part-000000000004-*.csv"))
    assert len(last) == 1
    last[0].unlink()
    first = out.read_bytes()
    out.unlink()
    assert main(args) == 0
    assert out.read_bytes() == first
    # Another method set cannot be mixed into the same table.
    assert main(args + ["--methods", "attn"]) == 2


def test_heatmap_names_never_collide_and_npy_on_request(tmp_path, model_cases):
    import numpy as np

    write_images(tmp_path / "imgs" / "a", 2)
    write_images(tmp_path / "imgs" / "b", 2)  # the same file names in another folder
    hm = tmp_path / "hm"
    args = ["-q", "score", "--model", model_cases["insightface-script"].path, "--images", str(tmp_path / "imgs"),
            "--out", str(tmp_path / "t"), "--heatmaps", str(hm), "--methods", "attn"]
    assert main(args) == 0
    names = sorted(str(p.relative_to(hm)) for p in hm.rglob("*.png"))
    assert names == ["a/img00.png.attn.png", "a/img01.png.attn.png", "b/img00.png.attn.png", "b/img01.png.attn.png"]
    png = np.asarray(Image.open(hm / "a" / "img00.png.attn.png"))
    assert png.shape == (112, 112, 3) and png.dtype == np.uint8
    assert main(args[:-2] + ["--methods", "attn", "--heatmap-format", "npy", "--overwrite"]) == 0
    arr = np.load(hm / "b" / "img01.png.attn.npy")
    assert arr.dtype == np.float32 and arr.ndim == 2 and 0 <= arr.min() <= arr.max() <= 1


def test_score_list_file(tmp_path, model_cases):
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "list.txt").write_text("imgs/img00.png\nimgs/img02.png\n")
    out = tmp_path / "s.csv"
    assert main(["-q", "score", "--model", model_cases["timm-script"].path, "--image-size", "32",
                 "--images", str(tmp_path / "list.txt"), "--out", str(out), "--methods", "attn"]) == 0
    assert len(read_rows(out)) == 2


@pytest.mark.parametrize("argv, msg", [
    (["score", "--model", "missing.pt", "--images", ".", "--out", "x.csv"], "model file not found"),
    (["score", "--model", "{m}", "--images", "{empty}", "--out", "x.csv"], "no images"),
    (["score", "--model", "{m}", "--images", "{empty}", "--out", "x.csv", "--methods", "bogus"], "unknown method"),
    (["score", "--model", "{m}", "--images", "{empty}", "--out", "{m}"], "exists and is not a folder"),
    (["inspect", "--model", "{corrupt}"], "could not load a TorchScript model"),
])
def test_errors_are_one_line(argv, msg, tmp_path, model_cases, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.pt").write_bytes(b"junk")
    argv = [a.format(m=model_cases["insightface-script"].path, empty=tmp_path / "empty", corrupt=tmp_path / "c.pt")
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitfiqa: error:") and msg in err[0]


def test_inspect(model_cases, capsys):
    assert main(["inspect", "--model", model_cases["timm-trace"].path]) == 0
    out = capsys.readouterr().out
    assert "num_blocks: 4" in out and "scaled_dot_product_attention" in out


def test_evaluate_on_bin(tmp_path, model_cases):
    import pickle

    rng = np.random.default_rng(1)
    bins = []
    for i in range(40):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format="PNG")
        bins.append(buf.getvalue())
    with open(tmp_path / "tiny.bin", "wb") as f:
        pickle.dump((bins, [i % 2 == 0 for i in range(20)]), f)
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--model", model_cases["insightface-script"].path, "--bin", str(tmp_path / "tiny.bin"),
                 "--fmr", "0.1", "--out", str(out)]) == 0
    assert (out / "table.md").read_text().startswith("| Method | tiny FMR=1e-1 |")
    assert (out / "edc_tiny_fmr0.1.png").stat().st_size > 1000


def test_set_and_config_file_reach_every_option(tmp_path, model_cases):
    """--set section.field=value and --config FILE (TOML or JSON) give the run the same config as the API."""
    import json

    import vitfiqa
    from vitfiqa import ScoreConfig
    from vitfiqa.pipeline import score_frame
    from vitfiqa.results import ScoreTable

    model = model_cases["timm-script"].path
    imgs = write_images(tmp_path / "imgs", 3)
    cfg = ScoreConfig(methods=["attn", "vitnt"], attn={"block": 1, "tokens": "patches"},
                      vitnt={"blocks": [0, 1, 2], "scale": 3.0})
    base = ["-q", "score", "--model", model, "--image-size", "32", "--images", str(imgs), "--batch-size", "2"]
    assert main(base + ["--out", str(tmp_path / "a"), "--set", "attn.block=1", "--set", "attn.tokens=patches",
                        "--set", "vitnt.blocks=0:3", "--set", "vitnt.scale=3"]) == 0
    (tmp_path / "c.toml").write_text('methods = ["attn", "vitnt"]\n[attn]\nblock = 1\ntokens = "patches"\n'
                                     '[vitnt]\nblocks = [0, 1, 2]\nscale = 3.0\n')
    assert main(base + ["--out", str(tmp_path / "b"), "--config", str(tmp_path / "c.toml")]) == 0
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(base + ["--out", str(tmp_path / "c"), "--config", str(tmp_path / "c.json")]) == 0
    files = sorted(str(p) for p in imgs.glob("*.png"))
    want = score_frame(vitfiqa.load(model, image_size=32), files, config=cfg, batch_size=2)
    for out in "abc":
        table = ScoreTable.open(tmp_path / out)
        assert ScoreConfig.from_dict(table.run["config"]) == cfg
        got = table.frame()
        for k in ("attn", "vitnt"):
            np.testing.assert_array_equal(got[k].to_numpy(), want[k].to_numpy())
    # --set applies after --config and the shorthands
    assert main(base + ["--out", str(tmp_path / "d"), "--config", str(tmp_path / "c.toml"), "--methods", "vitnt",
                        "--set", "methods=attn"]) == 0
    assert ScoreTable.open(tmp_path / "d").keys == ["attn"]


@pytest.mark.parametrize("extra, msg", [
    (["--set", "vitnt.blocks=x"], "vitnt.blocks"),
    (["--set", "vitnt.scale=fast"], "vitnt.scale"),
    (["--set", "nope.field=1"], "unknown score config field"),
    (["--set", "attn.block"], "expected section.field=value"),
    (["--set", "heatmap.normalize=x", "--heatmaps", "hm"], "heatmap.normalize"),
    (["--config", "missing.toml"], "file not found"),
    (["--config", "{bad}"], "not valid TOML"),
    (["--config", "{unknown}"], "unknown score config field"),
])
def test_config_errors_are_one_line_naming_the_field(extra, msg, tmp_path, model_cases, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.toml").write_text("[attn\nblock = ")
    (tmp_path / "unknown.toml").write_text("[attn]\nblok = 1\n")
    extra = [a.format(bad=tmp_path / "bad.toml", unknown=tmp_path / "unknown.toml") for a in extra]
    argv = ["score", "--model", model_cases["insightface-script"].path, "--images", str(tmp_path / "empty"),
            "--out", str(tmp_path / "x.csv"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitfiqa: error:") and msg in err[0]
