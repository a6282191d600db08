"""Faces from photos, measured: detection rate and primary-face choice on real multi-face photographs, the time
of decode + detect + align per photo against the embedded model's scoring forward, and the pixels of the IJB-C
alignment against insightface's (scikit-image estimate + ``cv2.warpAffine(..., borderValue=0.0)``).

Photos: dlib's ``examples/faces`` (https://github.com/davisking/dlib): nine PASCAL VOC 2011 photographs with
dlib's hand-made face boxes (``training.xml`` + ``testing.xml``), plus three unannotated ones
(``bald_guys.jpg``, ``Tom_Cruise_avp_2014_4.jpg``, ``dogs.jpg``). They are read here, not shipped: the VOC
images come from Flickr under the VOC terms of use (research use, the Flickr terms of each photo). Get them with
``git clone --depth 1 https://github.com/davisking/dlib`` and pass ``--photos dlib/examples/faces``.

    python benchmarks/detect_align.py --photos dlib/examples/faces

A dlib box covers eyes, nose and mouth (about 37-110 px here). A detection *finds* an annotated face when its
nose landmark lies inside that box (one-to-one, highest confidence first); a confident detection that finds
none is *extra* (a face dlib's annotators left out, or a false detection).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def gt_boxes(folder: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    out: dict[str, list] = {}
    for name in ("training.xml", "testing.xml"):
        path = folder / name
        if not path.is_file():
            continue
        for im in ET.parse(path).getroot().iter("image"):
            boxes = [(float(b.get("left")), float(b.get("top")), float(b.get("width")), float(b.get("height")))
                     for b in im.iter("box") if b.get("ignore", "0") != "1"]
            out.setdefault(im.get("file"), []).extend(boxes)
    return out


def match(faces, boxes):
    """Greedy one-to-one: a detection (highest confidence first) finds the first unfound box holding its nose."""
    found: dict[int, int] = {}
    for i, f in sorted(enumerate(faces), key=lambda t: -t[1].score):
        nx, ny = f.landmarks[2]
        for j, (x, y, w, h) in enumerate(boxes):
            if j not in found.values() and x <= nx <= x + w and y <= ny <= y + h:
                found[i] = j
                break
    return found


def median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", required=True, help="dlib's examples/faces folder")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "detect_align.md"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--commit", help="the dlib commit the photos come from (default: git rev-parse in --photos)")
    args = ap.parse_args(argv)

    import cv2
    import torch

    import vitfiqa
    from vitfiqa.align import align_face
    from vitfiqa.detect import (CONFIDENT_SCORE, DETECT_SIZE, MIN_EYE_DISTANCE, MIN_SCORE, detect_array,
                                primary_face)
    from vitfiqa.preprocess import read_image

    folder = Path(args.photos)
    commit = args.commit
    if commit is None:
        import subprocess

        r = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() if r.returncode == 0 else "unknown"
    gt = gt_boxes(folder)
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"no photos in {folder}")
    lines = ["# Faces from photos: detection, primary face, time, IJB-C alignment pixels", "",
             f"Made by `benchmarks/detect_align.py` on {machine()}, OpenCV {cv2.__version__}, load average "
             f"{os.getloadavg()[0]:.1f} at the start (a shared machine: times are indicative).", "",
             f"Detector: bundled YuNet 2023mar through `cv2.FaceDetectorYN`, photos shrunk to {DETECT_SIZE} px "
             f"(longer side) for detection; confident = score >= {CONFIDENT_SCORE}; listed = score >= {MIN_SCORE}; "
             f"too small = inter-eye distance < {MIN_EYE_DISTANCE:g} px.", "",
             f"Photos: dlib's `examples/faces` (github.com/davisking/dlib at {commit}): PASCAL VOC 2011 photographs with dlib's hand-made face boxes (Flickr images under the VOC "
             "terms of use; read for this measurement, not shipped), and three unannotated photos.", "",
             "## Detection rate and primary face on annotated multi-face photos", "",
             "A detection finds an annotated face when its nose landmark lies inside the face's box (one to one). "
             "Primary: is the face `primary_face` picks the annotated face nearest the image centre?", "",
             "| photo | size | annotated | found (confident) | found (>= 0.5) | extra confident | found but too "
             "small | eye distance of found (median px) | primary = annotated face nearest centre |",
             "|---|---|---|---|---|---|---|---|---|"]
    tot = dict(gt=0, conf=0, listed=0, extra=0, small=0, prim=0, prim_n=0)
    for p in photos:
        if p.name not in gt:
            continue
        img = read_image(p, exif_orientation=True)
        boxes = gt[p.name]
        faces = detect_array(img)
        conf = [f for f in faces if f.score >= CONFIDENT_SCORE]
        m_conf, m_all = match(conf, boxes), match(faces, boxes)
        small = sum(conf[i].eye_distance < MIN_EYE_DISTANCE for i in m_conf)
        eyes = [conf[i].eye_distance for i in m_conf]
        h, w = img.shape[:2]
        centre_gt = min(range(len(boxes)), key=lambda j: math.hypot(boxes[j][0] + boxes[j][2] / 2 - w / 2,
                                                                  boxes[j][1] + boxes[j][3] / 2 - h / 2))
        prim = primary_face(faces, img.shape)
        ok = prim is not None and match([prim], [boxes[centre_gt]]) == {0: 0}
        tot["gt"] += len(boxes)
        tot["conf"] += len(m_conf)
        tot["listed"] += len(m_all)
        tot["extra"] += len(conf) - len(m_conf)
        tot["small"] += small
        tot["prim"] += ok
        tot["prim_n"] += 1
        lines.append(f"| {p.name} | {w}x{h} | {len(boxes)} | {len(m_conf)} | {len(m_all)} | "
                     f"{len(conf) - len(m_conf)} | {small} | "
                     f"{statistics.median(eyes) if eyes else float('nan'):.1f} | {'yes' if ok else 'no'} |")
    lines += [f"| **all** | | **{tot['gt']}** | **{tot['conf']}** ({tot['conf'] / tot['gt']:.0%}) | "
              f"**{tot['listed']}** ({tot['listed'] / tot['gt']:.0%}) | **{tot['extra']}** | **{tot['small']}** | | "
              f"**{tot['prim']} / {tot['prim_n']}** |", ""]
    lines += ["Unannotated photos (confident detections):", ""]
    for p in photos:
        if p.name in gt:
            continue
        img = read_image(p, exif_orientation=True)
        faces = [f for f in detect_array(img) if f.score >= CONFIDENT_SCORE]
        small = sum(f.eye_distance < MIN_EYE_DISTANCE for f in faces)
        lines.append(f"- {p.name} ({img.shape[1]}x{img.shape[0]}): {len(faces)} confident faces, {small} too "
                     f"small, scores {', '.join(f'{f.score:.2f}' for f in faces) or '-'}")
    lines.append("")

    # --- time per photo ---------------------------------------------------------------------------------------
    model = vitfiqa.load()
    from vitfiqa.demo import RECOGNIZER

    size_mb = Path(RECOGNIZER).stat().st_size / 1e6
    rows = []
    crops = []
    for p in photos:
        raw = p.read_bytes()
        img = read_image(raw, exif_orientation=True)
        t_dec = median_time(lambda: read_image(raw, exif_orientation=True), args.repeats)
        t_det = median_time(lambda: detect_array(img), args.repeats)
        face = primary_face(detect_array(img), img.shape)
        t_align = median_time(lambda: align_face(img, face.landmarks), args.repeats) if face else float("nan")
        if face:
            crops.append(align_face(img, face.landmarks))
        rows.append((p.name, img.shape, t_dec, t_det, t_align))
    batch32 = torch.from_numpy(np.stack([crops[i % len(crops)] for i in range(32)]))
    model.score(batch32.numpy())  # TorchScript specialises on its first runs of a shape
    t_score32 = median_time(lambda: model.score(batch32.numpy()), max(3, args.repeats // 2)) / 32
    lines += ["## Time per photo (median of {} runs, one thread of decoding)".format(args.repeats), "",
              f"Scoring forward: the embedded demo model (`vitfiqa.load()`, {size_mb:.1f} MB TorchScript, "
              f"default methods) on aligned 112x112 crops, torch {torch.get_num_threads()} threads: "
              f"**{t_score32 * 1e3:.1f} ms** per crop in batches of 32.", "",
              "| photo | size | decode (ms) | detect (ms) | align (ms) | detect + align / scoring per crop (batch 32) |",
              "|---|---|---|---|---|---|"]
    for name, shape, t_dec, t_det, t_align in rows:
        ratio = (t_det + (0 if math.isnan(t_align) else t_align)) / t_score32
        lines.append(f"| {name} | {shape[1]}x{shape[0]} | {t_dec * 1e3:.1f} | {t_det * 1e3:.1f} | "
                     f"{t_align * 1e3:.2f} | {ratio:.1f}x |")
    det_med = statistics.median(r[3] for r in rows)
    al_med = statistics.median(r[4] for r in rows if not math.isnan(r[4]))
    lines += ["", f"Median: detect {det_med * 1e3:.1f} ms + align {al_med * 1e3:.2f} ms per photo, against "
              f"{t_score32 * 1e3:.1f} ms per crop for the embedded model's scoring (batch 32); OpenCV ran "
              f"{cv2.getNumThreads()} threads. The embedded model is a small stand-in (a real recognition ViT "
              "costs more per crop; not measured here). Photos larger than "
              f"{DETECT_SIZE} px are shrunk before detection, so detection time is bounded; decoding a large "
              "photo is not. Alignment decodes nothing more: the pipeline aligns the photo it decoded for "
              "detection (an all-faces run decodes each photo twice: once to list its faces, once to align).",
              ""]

    # --- IJB-C alignment pixels ---------------------------------------------------------------------------------
    from skimage import transform as trans

    from vitfiqa.align import FaceCrop, estimate_norm
    from vitfiqa.eval.datasets import read_ijbc_landmarks
    from vitfiqa.preprocess import load_uint8

    dst = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                    [70.7299, 92.2041]], dtype=np.float32)
    rng = np.random.default_rng(0)
    tmp = Path(args.out).with_suffix(".landmarks.tmp")
    n = worst = worst_m = border = 0
    try:
        for p in photos:
            img = read_image(p)
            faces = detect_array(img)
            text = []
            for f in faces:
                base = np.asarray(f.landmarks)
                for k in range(20):  # the detection, and jittered copies (IJB-C's loose crops are tight)
                    lm = base + (rng.normal(0, 0.02 * f.eye_distance + 0.5, base.shape) if k else 0)
                    text.append(f"{p.name} " + " ".join(f"{v:.2f}" for v in lm.reshape(-1)) + f" {f.score:.3f}")
            if not text:
                continue
            tmp.write_text("\n".join(text) + "\n")
            names, lms, _ = read_ijbc_landmarks(tmp)
            for line, lm in zip(text, lms):
                ref_lm = np.array([float(x) for x in line.split()[1:-1]], dtype=np.float32).reshape(5, 2)
                t = trans.SimilarityTransform()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    t.estimate(ref_lm, dst * 1.0)
                ref = cv2.warpAffine(img, t.params[0:2, :], (112, 112), borderValue=0.0)
                ours = load_uint8(FaceCrop(str(p), lm), (112, 112))
                worst = max(worst, int(np.abs(ours.astype(int) - ref).max()))
                worst_m = max(worst_m, float(np.abs(estimate_norm(lm) - t.params[0:2, :]).max()))
                border += int((ref == 0).all(axis=2).any())
                n += 1
    finally:
        tmp.unlink(missing_ok=True)
    lines += ["## IJB-C alignment against insightface", "",
              "Landmarks of every face detected in these photos (and 19 jittered copies of each) written as an "
              "IJB-C `name_5pts_score` file, read by the IJB-C loader's reader and aligned through its `FaceCrop` "
              "route, against insightface's evaluation on the same lines: landmarks parsed as float32, "
              "`skimage.transform.SimilarityTransform().estimate(lmk, arcface_dst)`, "
              "`cv2.warpAffine(img, M, (112, 112), borderValue=0.0)`.", "",
              f"- crops compared: {n} ({border} of them reach past the photo into the black border)",
              f"- max |matrix difference|: {worst_m:g}",
              f"- max |pixel difference|: **{worst}** grey levels", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
