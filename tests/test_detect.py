"""Faces from photos: the bundled detector, the primary-face rule, the face stage of the pipeline and CLI.

Photos: scikit-image's ``astronaut`` (Eileen Collins, NASA; public domain, shipped inside scikit-image) and
``coffee`` (no face; scikit-image's own sample, CC0), composed into multi-face scenes here."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import vitfiqa
from vitfiqa.align import align_face
from vitfiqa.detect import (CONFIDENT_SCORE, FACE_COLUMNS, MIN_EYE_DISTANCE, Face, FaceSource, detect_faces,
                            face_sources, primary_face)
from vitfiqa.pipeline import score_frame

from .face_photos import make_photos

data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def model():
    return vitfiqa.load()


def test_detects_the_astronaut(photos):
    (faces,) = detect_faces([photos / "astronaut.jpg"])
    assert len(faces) == 1
    f = faces[0]
    assert f.score > CONFIDENT_SCORE
    x, y, w, h = f.box
    lm = np.asarray(f.landmarks)
    assert ((lm[:, 0] > x) & (lm[:, 0] < x + w) & (lm[:, 1] > y) & (lm[:, 1] < y + h)).all()
    assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # template order: image left to right
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above the nose above the mouth
    assert 35 < f.eye_distance < 60
    assert primary_face(faces, (512, 512)) == f
    # paths, encoded bytes and arrays give the same faces; a single image is a list of one
    raw = (photos / "astronaut.jpg").read_bytes()
    arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    for other in (detect_faces(raw), detect_faces([arr]), detect_faces(str(photos / "astronaut.jpg"))):
        assert other == [faces]
    assert detect_faces([photos / "coffee.jpg"]) == [[]]


def test_large_photos_are_detected_at_reduced_size_in_their_own_pixels(photos):
    """A 2048-px photo is detected at DETECT_SIZE; boxes and landmarks come back in the photo's pixels."""
    astro = data.astronaut()
    big = np.asarray(Image.fromarray(astro).resize((2048, 2048), Image.BILINEAR))
    small, large = detect_faces([astro, big])
    assert len(small) == len(large) == 1
    # detector noise is a few pixels; a missed back-mapping (x3.2) would be off by hundreds
    np.testing.assert_allclose(np.asarray(large[0].landmarks) / 4, small[0].landmarks, atol=8)
    assert large[0].eye_distance == pytest.approx(4 * small[0].eye_distance, rel=0.08)


def test_primary_face_is_the_confident_one_nearest_the_centre(photos):
    (faces,) = detect_faces([photos / "group.png"])
    assert len(faces) == 3
    p = primary_face(faces, (420, 1000))
    assert 380 < p.center[0] < 620
    # a low-confidence detection at the very centre does not win; none confident -> None
    decoy = Face((480, 190, 40, 40), [(490, 200), (510, 200), (500, 210), (492, 220), (508, 220)], 0.6)
    assert primary_face([decoy, *faces], (420, 1000)) == p
    assert primary_face([decoy], (420, 1000)) is None


def test_pipeline_detect_scores_the_aligned_primary_face(photos, model):
    files = [str(photos / n) for n in ("astronaut.jpg", "coffee.jpg", "tiny.png", "group.png", "missing.jpg")]
    df = score_frame(model, files, run={"detect": True}, batch_size=2)
    assert list(df.path) == files
    assert list(df.columns) == ["index", "path", *model.columns(vitfiqa.ScoreConfig()), *FACE_COLUMNS, "error"]
    errors = list(df.error)
    assert errors[0] == "" and errors[3] == ""
    assert errors[1] == "no face found"
    assert errors[2].startswith("face too small") and str(int(MIN_EYE_DISTANCE)) in errors[2]
    assert "not found" in errors[4]
    # the too-small face keeps its box and landmarks; unreadable / faceless rows are NaN
    assert df.eye_distance[2] < MIN_EYE_DISTANCE and np.isnan(df.eye_distance[1]) and np.isnan(df.face_x[4])
    # the row's numbers are the primary face's, and its scores are those of the aligned crop
    astro = np.asarray(Image.open(files[0]).convert("RGB"))
    face = primary_face(detect_faces([astro])[0], astro.shape)
    for k, v in face.row().items():
        assert df[k][0] == pytest.approx(v, abs=1e-9)
    direct = model.score(align_face(astro, face.landmarks)[None])
    for k in ("attn", "vitnt"):
        if k in df:
            assert df[k][0] == pytest.approx(float(direct.columns()[k][0]), rel=1e-5)
    group = primary_face(detect_faces([photos / "group.png"])[0], (420, 1000))
    assert df.face_x[3] == pytest.approx(group.box[0])


def test_all_faces_gives_one_row_per_face(photos, model):
    files = [str(photos / n) for n in ("group.png", "coffee.jpg", "astronaut.jpg")]
    df = score_frame(model, files, run={"detect": True, "all_faces": True}, batch_size=3)
    assert list(df.path) == [f"{files[0]}#0", f"{files[0]}#1", f"{files[0]}#2", files[1], f"{files[2]}#0"]
    assert list(df.error) == ["", "", "", "no face found", ""]
    assert len(set(np.round(df.face_x[:3]))) == 3
    assert df.face_score[:3].min() >= CONFIDENT_SCORE


def test_landmark_file_skips_the_detector(photos, model, tmp_path):
    astro = np.asarray(Image.open(photos / "astronaut.jpg").convert("RGB"))
    lm = np.array([[200.1, 101.9], [247.1, 102.6], [220.4, 124.5], [198.6, 142.8], [239.7, 143.6]])
    path = tmp_path / "lm.txt"
    path.write_text("astronaut.jpg " + " ".join(f"{v:.1f}" for v in lm.reshape(-1)) + " 0.77\n")
    files = [str(photos / "astronaut.jpg"), str(photos / "coffee.jpg")]
    df = score_frame(model, files, run={"landmarks": path})
    assert df.error[0] == "" and df.error[1] == "no landmarks for this image in lm.txt"
    assert df.face_score[0] == pytest.approx(0.77) and np.isnan(df.face_x[0])
    assert df.left_eye_x[0] == pytest.approx(200.1) and df.eye_distance[0] == pytest.approx(47.0, abs=0.1)
    direct = model.score(align_face(astro, lm)[None]).columns()
    assert df.attn[0] == pytest.approx(float(direct["attn"][0]), rel=1e-5)
    with pytest.raises(ValueError, match="without a detector"):
        face_sources(files, files, detect=True, landmarks=path)
    with pytest.raises(ValueError, match="needs detect"):
        face_sources(files, files, all_faces=True)


def test_face_source_records_round_trip():
    f = Face((1, 2, 3, 4), np.arange(10.0).reshape(5, 2) * 10, 0.9)
    for src in (FaceSource("a.jpg", f), FaceSource(b"xx", None, "no face found")):
        r = src.to_record()
        assert FaceSource.from_record(r["source"], r["face"], r["reason"]) == src


def test_cli_detect_all_faces_and_landmarks(photos, tmp_path):
    from vitfiqa.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    for n in ("astronaut.jpg", "coffee.jpg", "group.png"):
        (folder / n).write_bytes((photos / n).read_bytes())
    assert main(["score", "--images", str(folder), "--out", str(tmp_path / "a.csv"), "--detect"]) == 0
    a = pd.read_csv(tmp_path / "a.csv", keep_default_na=False)
    assert len(a) == 3 and set(FACE_COLUMNS) <= set(a.columns)
    assert list(a.error) == ["", "no face found", ""]
    assert main(["score", "--images", str(folder), "--out", str(tmp_path / "b.csv"), "--detect", "--all-faces"]) == 0
    b = pd.read_csv(tmp_path / "b.csv", keep_default_na=False)
    assert [p.rsplit("/", 1)[1] for p in b.path] == ["astronaut.jpg#0", "coffee.jpg", "group.png#0", "group.png#1",
                                                     "group.png#2"]
    # the rows of the primary-face run are rows of the all-faces run
    assert a.attn[0] == pytest.approx(b.attn[0], rel=1e-6)
    lm = tmp_path / "lm.txt"
    lm.write_text("astronaut.jpg 200.1 101.9 247.1 102.6 220.4 124.5 198.6 142.8 239.7 143.6 0.9\n")
    assert main(["score", "--images", str(folder), "--out", str(tmp_path / "c.csv"), "--landmarks", str(lm)]) == 0
    c = pd.read_csv(tmp_path / "c.csv", keep_default_na=False)
    assert list(c.error)[0] == "" and "no landmarks" in c.error[1]
    assert main(["score", "--images", str(folder), "--out", str(tmp_path / "d.csv"), "--all-faces"]) == 2
    assert not (tmp_path / "d.csv").exists()


def test_photos_doc_runs(tmp_path, monkeypatch):
    """docs/photos.md, executed: its python and bash blocks in order, in a fresh folder (blocks marked
    ``<!-- not-run: ... -->`` on the line before are left out)."""
    import os
    import re
    import shlex
    import subprocess
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "photos.md").read_text()
    blocks = [(m.group(2), m.group(3)) for m in re.finditer(r"(<!-- not-run[^\n]*\n)?```(python|bash)\n(.*?)```",
                                                            text, re.S) if not m.group(1)]
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    from vitfiqa.cli import main

    for lang, code in blocks:
        if lang == "python":
            exec(compile(code, "photos.md", "exec"), {})
            continue
        for line in code.strip().splitlines():
            if line.startswith("vitfiqa "):  # the CLI in this process (as the console script runs it)
                assert main(shlex.split(line)[1:]) == 0, line
            else:
                r = subprocess.run(["bash", "-ec", line], capture_output=True, text=True, timeout=60)
                assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(tmp_path / "all_faces.csv", keep_default_na=False)
    assert sum(os.path.basename(p).startswith("group.jpg#") for p in df.path) == 3


def test_exif_orientation_is_applied(photos, tmp_path):
    """A camera's portrait photo stored sideways with an EXIF orientation tag is detected upright."""
    astro = Image.fromarray(data.astronaut())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    astro.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    upright, sideways = detect_faces([photos / "astronaut.jpg", tmp_path / "sideways.jpg"])
    assert len(sideways) == 1
    np.testing.assert_allclose(sideways[0].landmarks, upright[0].landmarks, atol=4)


def test_face_stage_in_decoding_processes_equals_threads(photos, model):
    """On a GPU the loader decodes in worker processes: face sources travel there pickled and give the same
    table as threads."""
    files = [str(photos / n) for n in ("group.png", "coffee.jpg", "astronaut.jpg")]
    run = {"detect": True, "all_faces": True}
    a = score_frame(model, files, run=run, batch_size=2, workers=2, decode_processes=True)
    b = score_frame(model, files, run=run, batch_size=2, workers=2, decode_processes=False)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("bad, exc, msg", [
    (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
    (np.zeros((10, 10, 5), np.uint8), ValueError, "HxWx3"),
    (b"not an image", ValueError, "cannot read image"),
    ("missing.jpg", FileNotFoundError, "not found"),
])
def test_detect_faces_rejects_bad_input(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        detect_faces([bad])
