"""The results table: atomic shards, resume after SIGKILL at random moments, damaged files detected and redone."""
import multiprocessing
import os
import random
import shutil
import signal
import time

import pytest

from vitfiqa.pipeline import score_frame
from vitfiqa.results import ScoreTable, TableError, read_scores

from .test_pipeline import write_mixed_images

KEYS = ["attn", "vitnt"]


def rows(start, n, paths, value=0.5):
    return {"index": list(range(start, start + n)), "path": paths[start:start + n],
            "attn": [value + i for i in range(n)], "vitnt": [float("nan")] * n, "error": ["bad"] * n}


def test_table_commit_reopen_and_export(tmp_path):
    paths = [f"/x/{i}.png" for i in range(10)]
    with ScoreTable(tmp_path / "t", paths=paths, keys=KEYS, batch_size=4, run={"model": "m"}) as t:
        assert t.pending_batches() == [0, 4, 8]
        t.commit(rows(4, 4, paths))
        t.commit(rows(4, 4, paths, value=9.0))  # already committed: ignored (a retried task)
        with pytest.raises(ValueError, match="incomplete"):
            t.commit(rows(0, 3, paths))
        with pytest.raises(ValueError, match="not image 8"):
            t.commit({**rows(8, 2, paths), "path": ["/y", "/z"]})
        with pytest.raises(TableError, match="not scored yet"):
            t.export(tmp_path / "x.csv")
    with ScoreTable(tmp_path / "t", paths=paths, keys=KEYS, batch_size=4, run={"model": "m"}) as t:
        assert t.pending_batches() == [0, 8] and t.n_done == 4
        t.commit({k: v[::-1] for k, v in rows(0, 4, paths).items()} | {"index": [3, 2, 1, 0]})  # any row order
        t.commit(rows(8, 2, paths))
        assert t.is_complete()
        frame = t.frame()
        t.export(tmp_path / "s.csv")
        t.export(tmp_path / "s.parquet")
    assert frame["index"].tolist() == list(range(10)) and frame["attn"].tolist()[4:6] == [0.5, 1.5]
    assert frame["vitnt"].isna().all() and (frame["error"] == "bad").all()
    assert read_scores(tmp_path / "s.csv").equals(frame)
    assert read_scores(tmp_path / "s.parquet").equals(frame)
    assert read_scores(tmp_path / "t").equals(frame)


@pytest.mark.parametrize("change, msg", [
    (dict(keys=["attn"]), "score columns"),
    (dict(batch_size=5), "batch size"),
    (dict(paths=[f"/x/{i}.png" for i in range(9)] + ["/x/other.png"]), "image list"),
    (dict(run={"model": "other"}), "model or options \\(model differ\\)"),
])
def test_table_refuses_another_runs_resume(tmp_path, change, msg):
    spec = dict(paths=[f"/x/{i}.png" for i in range(10)], keys=KEYS, batch_size=4, run={"model": "m"})
    ScoreTable(tmp_path / "t", **spec).close()
    with pytest.raises(TableError, match=msg):
        ScoreTable(tmp_path / "t", **{**spec, **change})
    ScoreTable(tmp_path / "t", **{**spec, **change}, overwrite=True).close()


def test_one_writer_at_a_time_and_damaged_manifest(tmp_path):
    spec = dict(paths=["/a.png"], keys=KEYS, batch_size=4)
    t = ScoreTable(tmp_path / "t", **spec)
    with pytest.raises(TableError, match="another process"):
        ScoreTable(tmp_path / "t", **spec)
    t.close()
    manifest = tmp_path / "t" / "table.json"
    manifest.write_bytes(manifest.read_bytes()[:17])
    with pytest.raises(TableError, match="damaged"):
        ScoreTable(tmp_path / "t", **spec)
    (tmp_path / "f").write_text("x")
    with pytest.raises(TableError, match="not a folder"):
        ScoreTable(tmp_path / "f", **spec)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_mixed_images(tmp_path_factory.mktemp("table_imgs"), 30, broken={4, 17})


def test_truncated_shards_are_detected_and_redone(tmp_path, images, loaded):
    """Cut shards (and leftover temporary files) at random byte offsets: the next run finds them, scores their
    batches again, and ends with the same table as one that was never damaged."""
    model = loaded("insightface-script")
    ref = score_frame(model, images, KEYS, batch_size=4, out=tmp_path / "ref")
    assert ref["attn"].isna().sum() == 2 and ref["error"].ne("").sum() == 2
    plain = score_frame(model, images, KEYS, batch_size=4)
    assert plain.equals(ref)  # the table is what the in-memory path gives, NaNs and all
    out = tmp_path / "t"
    score_frame(model, images, KEYS, batch_size=4, out=out)
    rng = random.Random(0)
    for trial in range(25):
        shards = sorted(out.glob("part-*.csv"))
        lost = 0
        for v in rng.sample(shards, rng.randint(1, 3)):
            data = v.read_bytes()
            lost += data.count(b"\n") - 1  # rows (the header aside)
            v.write_bytes(data[:rng.randrange(len(data))])  # any byte offset, 0 included
        (out / f".part-x.{trial}.tmp").write_bytes(b"index,pa")  # a writer killed before its rename
        assert ScoreTable.open(out).n_done == len(images) - lost  # damaged shards never count as done
        again = score_frame(model, images, KEYS, batch_size=4, out=out)
        assert again.equals(ref), trial
        assert not list(out.glob("*.tmp"))


def _run_cli(argv):
    import threading

    import torch
    from tqdm import tqdm

    from vitfiqa.cli import main

    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which a SIGKILL would leak
    os._exit(main(argv))


def test_sigkill_at_random_moments_then_resume_gives_the_same_table(tmp_path, images, model_cases):
    """`vitfiqa score` killed with SIGKILL at random moments, again and again, then resumed: the export and the
    heatmap files are byte for byte those of a run that was never interrupted."""
    ctx = multiprocessing.get_context("forkserver")
    # Children fork from a server that has imported everything already, so they start in milliseconds.
    ctx.set_forkserver_preload(["vitfiqa.cli", "vitfiqa.pipeline", "vitfiqa.results", "pandas", "tqdm.auto", "PIL.Image",
                                "matplotlib.pyplot"])

    def argv(name):
        return ["-q", "score", "--model", model_cases["insightface-script"].path, "--images",
                os.path.dirname(images[0]), "--out", str(tmp_path / f"{name}.csv"), "--batch-size", "3",
                "--workers", "2", "--heatmaps", str(tmp_path / f"{name}_hm"), "--methods", "attn,vitnt"]

    def run(name, kill_after=None):
        p = ctx.Process(target=_run_cli, args=(argv(name),))
        t0 = time.perf_counter()
        p.start()
        p.join(kill_after)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            return None, time.perf_counter() - t0
        return p.exitcode, time.perf_counter() - t0

    warm = ctx.Process(target=int)  # starts the fork server, so that `full` times the run alone
    warm.start()
    warm.join()
    code, full = run("ref")
    assert code == 0
    ref_hm = sorted(p.relative_to(tmp_path / "ref_hm") for p in (tmp_path / "ref_hm").rglob("*.png"))
    assert len(ref_hm) == 2 * (len(images) - 2)  # attn and vitnt heatmaps of each readable image

    def check_identical():
        assert (tmp_path / "killed.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
        got = sorted(p.relative_to(tmp_path / "killed_hm") for p in (tmp_path / "killed_hm").rglob("*.png"))
        assert got == ref_hm and not list((tmp_path / "killed_hm").rglob("*.tmp"))  # leftovers cleared on resume
        for rel in ref_hm:
            assert (tmp_path / "killed_hm" / rel).read_bytes() == (tmp_path / "ref_hm" / rel).read_bytes(), rel

    rng = random.Random(1)
    kills, finished, committed = 0, 0, []
    while kills < 12:
        code, _ = run("killed", kill_after=rng.uniform(0.0, full))
        if code is None:
            kills += 1
            table = tmp_path / "killed.csv.table"
            if (table / "table.json").exists():
                committed.append(ScoreTable.open(table).n_done)  # always readable: no shard is ever torn
            continue
        assert code == 0
        check_identical()  # killed any number of times, then finished: the same bytes as the reference run
        finished += 1
        shutil.rmtree(tmp_path / "killed.csv.table")
        shutil.rmtree(tmp_path / "killed_hm")
        (tmp_path / "killed.csv").unlink()
    code, _ = run("killed")
    assert code == 0
    check_identical()
    print(f"{kills} SIGKILLs, {finished + 1} resumed runs finished identical; uninterrupted run {full:.2f} s; "
          f"images committed at each kill: {committed}")
