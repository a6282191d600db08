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
    (["score", "--model", "{m}", "--images", "{empty}", "--out", "x.csv", "--methods", "bogus"], "unknown quality method"),
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


def test_every_option_has_help_and_every_command_an_example():
    import argparse

    from vitfiqa.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all(a.help for a in parser._actions if a.dest not in ("help", "command"))
    assert set(sub.choices) == {"score", "evaluate", "reproduce", "inspect", "demo", "train-demo"}
    for name, p in sub.choices.items():
        missing = [a.option_strings or a.dest for a in p._actions if not a.help]
        assert not missing, (name, missing)
        assert f"vitfiqa {name}" in (p.epilog or ""), name
        assert f"vitfiqa {name}" in p.format_help()  # the example is shown by --help


@pytest.mark.parametrize("out", ["e8.txt", "scores.json", "scores.CSV"])
def test_out_with_an_unknown_extension_is_refused(out, tmp_path, model_cases, capsys):
    write_images(tmp_path / "imgs", 1)
    assert main(["-q", "score", "--model", model_cases["insightface-script"].path, "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and not (tmp_path / out).exists()


def test_folder_and_list_take_the_same_image_types(tmp_path, model_cases, capsys):
    from vitfiqa.loader import IMAGE_EXTENSIONS

    assert ".gif" in IMAGE_EXTENSIONS
    d = tmp_path / "imgs"
    write_images(d, 1)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "b.gif")
    (d / "notes.txt").write_text("not an image")
    model = model_cases["insightface-script"].path
    assert main(["-q", "score", "--model", model, "--images", str(d), "--out", str(tmp_path / "f.csv"),
                 "--methods", "attn"]) == 0
    assert sorted(r["path"].rsplit("/", 1)[1] for r in read_rows(tmp_path / "f.csv")) == ["b.gif", "img00.png"]
    (tmp_path / "list.txt").write_text("imgs/img00.png\nimgs/b.gif\n")
    assert main(["-q", "score", "--model", model, "--images", str(tmp_path / "list.txt"),
                 "--out", str(tmp_path / "l.csv"), "--methods", "attn"]) == 0
    assert [r["error"] for r in read_rows(tmp_path / "l.csv")] == ["", ""]
    (tmp_path / "list.txt").write_text("imgs/img00.png\nimgs/notes.txt\n")
    capsys.readouterr()
    assert main(["-q", "score", "--model", model, "--images", str(tmp_path / "list.txt"),
                 "--out", str(tmp_path / "m.csv"), "--methods", "attn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an image file" in err[0] and "notes.txt" in err[0]


def test_an_error_never_shares_a_line_with_the_progress_bar(tmp_path, model_cases, capsys, monkeypatch):
    import vitfiqa.pipeline

    real = vitfiqa.pipeline.score_files

    def fails_after_one_batch(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        raise RuntimeError("disk full")

    monkeypatch.setattr(vitfiqa.pipeline, "score_files", fails_after_one_batch)
    write_images(tmp_path / "imgs", 4, broken={0})
    assert main(["score", "--model", model_cases["insightface-script"].path, "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "s.csv"), "--batch-size", "2", "--methods", "attn"]) == 2
    err = capsys.readouterr().err
    shown = [ln.rsplit("\r", 1)[-1] for ln in err.split("\n")]  # what a terminal shows: after the last \r
    assert "vitfiqa: error: disk full" in shown, err
    # a skip is logged above the bar, on its own line ("vitfiqa: " when the CLI's log format is in effect: not
    # under pytest, whose handlers are already on the root logger)
    assert any(ln.startswith(("vitfiqa: skipping ", "skipping ")) for ln in shown), err
    for ln in shown:
        assert "vitfiqa: " not in ln or (ln.startswith("vitfiqa: ") and "scoring" not in ln), repr(ln)


def test_train_demo_writes_to_the_folder_named(tmp_path, monkeypatch):
    import vitfiqa.demo.train
    from vitfiqa.demo import QUALITY_MODEL, RECOGNIZER

    calls = []
    monkeypatch.setattr(vitfiqa.demo.train, "train", lambda cfg, work, **kw: calls.append(kw) or {})
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "train-demo", "--depth", "2"]) == 0
    assert calls[-1]["recognizer_out"] == tmp_path.joinpath("vitfiqa-demo-models", "demo_recognizer.pt").relative_to(
        tmp_path) and calls[-1]["quality_out"].name == "demo_vitfiqa.pt"
    assert main(["-q", "train-demo", "--out-dir", str(tmp_path / "mine")]) == 0
    assert calls[-1]["recognizer_out"] == tmp_path / "mine" / "demo_recognizer.pt"
    assert RECOGNIZER not in calls[-1].values() and QUALITY_MODEL not in calls[-1].values()
    assert main(["-q", "train-demo", "--install"]) == 0
    assert "recognizer_out" not in calls[-1]  # train()'s defaults: the package's own assets, only when asked
    with pytest.raises(SystemExit):  # not both
        main(["-q", "train-demo", "--install", "--out-dir", "x"])


def test_results_print_as_summaries_and_frames_carry_ids(tmp_path, model_cases):
    import vitfiqa
    from vitfiqa.pipeline import score_files

    paths = [str(p) for p in sorted(write_images(tmp_path / "imgs", 3, broken={1}).iterdir())]
    m = vitfiqa.load(model_cases["insightface-script"].path)
    good = [paths[0], paths[2]]
    r = m.score(good, methods=("attn", "vitnt"), heatmaps=True)
    text = repr(r)
    assert text.startswith("QualityResult(2 images; attn: ") and "heatmaps attn [2, 112, 112]" in text
    assert len(text) < 400 and "tensor(" not in text
    df = r.to_frame()
    assert list(df.columns) == ["index", "path", "attn", "vitnt"] and df["path"].tolist() == good
    assert m.score(good, methods=("attn",), batch_size=1).to_frame()["path"].tolist() == good
    sb = next(score_files(m, paths, methods=("attn",), batch_size=3))
    text = repr(sb)
    assert text == "ScoredBatch(images 0..2: 2 scored, 1 skipped; columns attn)"
    assert "tensor(" not in repr(sb.batch)


def test_malloc_tuning_is_applied_once_and_can_be_declined(monkeypatch):
    import sys

    import vitfiqa.malloc as malloc

    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.setenv("VITFIQA_MALLOC", "default")
    assert malloc.keep_freed_memory() is False
    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.delenv("VITFIQA_MALLOC")
    expected = sys.platform.startswith("linux") and malloc._glibc() is not None
    assert malloc.keep_freed_memory() is expected
    assert malloc.keep_freed_memory() is expected  # once per process
