"""Small synthetic benchmarks written exactly in the public releases' layouts, for tests, the notebook and
for trying a reproduce config without the real data (no face data can be downloaded here).

Images are identity patterns (smooth random fields, one per subject) with per-image jitter and a random
share of degraded (noisy, blurred or darkened) copies, so a recognizer separates subjects imperfectly and
image quality matters. Layouts:

- insightface ``.bin``: pickle of (list of encoded JPEG bytes, issame list), pairs (2i, 2i+1).
- LFW / XQLFW: ``<root>/<name>/<name>_<n:04d>.jpg`` and a ``pairs.txt`` whose first line holds counts,
  genuine lines ``name n1 n2``, impostor lines ``name1 n1 name2 n2`` (tab-separated, as the releases).
- Adience: ``fold_<k>_data.txt`` tab-separated with the release header, ages like ``(25, 32)``, face crops
  at ``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>``.
- IJB-C: ``meta/ijbc_face_tid_mid.txt``, ``meta/ijbc_template_pair_label.txt``,
  ``meta/ijbc_name_5pts_score.txt`` and loose crops (the face at a random similarity transform of the
  ArcFace template, the landmarks stating where) in ``loose_crop/<n>.jpg``.
- CR-FIQA lists: ``image_path_list.txt`` (paths relative to the data folder) and ``pair_list.txt`` of image
  names without extension.
- CR-FIQA's prepared folder of a ``.bin`` (:func:`write_crfiqa_prepared`), as its
  ``feature_extraction/extract_bin.py`` writes it: channel-swapped image files (read it with
  ``prepared="crfiqa"``).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..align import ARCFACE_TEMPLATE, TEMPLATE_SIZE


def _identity_pattern(rng: np.random.Generator, size: int = TEMPLATE_SIZE[0]) -> np.ndarray:
    from PIL import Image

    low = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float64)


def face_image(base: np.ndarray, rng: np.random.Generator, degrade: float) -> np.ndarray:
    """One image of a subject: the pattern shifted a little, plus noise; ``degrade`` in [0, 1] adds noise,
    blur and contrast loss."""
    from PIL import Image, ImageFilter

    dy, dx = rng.integers(-3, 4, 2)
    img = np.roll(base, (dy, dx), axis=(0, 1))
    img = img + rng.normal(0, 8 + 60 * degrade, img.shape)
    img = (img - 128) * (1 - 0.6 * degrade) + 128
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if degrade > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(1 + 3 * degrade))
    return np.asarray(pil)


def _jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _subjects(n: int, rng) -> list[np.ndarray]:
    return [_identity_pattern(rng) for _ in range(n)]


def write_bin(path, n_pairs: int = 60, n_subjects: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    bases = _subjects(n_subjects, rng)
    bins, issame = [], []
    for i in range(n_pairs):
        same = i % 2 == 0
        a = int(rng.integers(n_subjects))
        b = a if same else int((a + rng.integers(1, n_subjects)) % n_subjects)
        for s in (a, b):
            bins.append(_jpeg(face_image(bases[s], rng, float(rng.random() ** 2))))
        issame.append(same)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)
    return path


def write_lfw_style(root, n_subjects: int = 12, per_subject: int = 4, n_pairs: int = 60, seed: int = 1,
                    pairs_name: str = "pairs.txt") -> Path:
    """An LFW/XQLFW folder and pairs file; returns the pairs file path."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = [f"Person_{chr(65 + i)}{i}" for i in range(n_subjects)]
    for name, base in zip(names, _subjects(n_subjects, rng)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(1, per_subject + 1):
            from PIL import Image

            Image.fromarray(face_image(base, rng, float(rng.random() ** 2))).save(
                root / name / f"{name}_{k:04d}.jpg", quality=92)
    lines = [f"1\t{n_pairs // 2}"]
    for i in range(n_pairs):
        if i % 2 == 0:
            n = names[rng.integers(n_subjects)]
            k1, k2 = rng.choice(np.arange(1, per_subject + 1), 2, replace=False)
            lines.append(f"{n}\t{k1}\t{k2}")
        else:
            a, b = rng.choice(n_subjects, 2, replace=False)
            lines.append(f"{names[a]}\t{rng.integers(1, per_subject + 1)}\t{names[b]}\t{rng.integers(1, per_subject + 1)}")
    path = root / pairs_name
    path.write_text("\n".join(lines) + "\n")
    return path


ADIENCE_HEADER = ("user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\t"
                  "fiducial_score")


def write_adience(root, n_subjects: int = 8, per_subject: int = 4, n_folds: int = 2, seed: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    ages = ["(0, 2)", "(8, 12)", "(25, 32)", "(38, 43)", "35"]
    for s, base in enumerate(_subjects(n_subjects, rng)):
        user = f"{10000000 + 7 * s}@N0{s % 9}"
        face_id = 100 + s
        (root / "aligned" / user).mkdir(parents=True, exist_ok=True)
        for k in range(per_subject):
            original = f"{rng.integers(10**10, 10**11)}_{rng.integers(16**9, 16**10):x}_o.jpg"
            Image.fromarray(face_image(base, rng, float(rng.random() ** 2))).save(
                root / "aligned" / user / f"landmark_aligned_face.{face_id}.{original}", quality=92)
            folds[s % n_folds].append("\t".join([user, original, str(face_id), ages[s % len(ages)], "mf"[s % 2],
                                                 "0", "0", "100", "100", "0", "0", "50"]))
    for k, rows in enumerate(folds):
        (root / f"fold_{k}_data.txt").write_text(ADIENCE_HEADER + "\n" + "\n".join(rows) + "\n")
    return root


def write_ijbc(root, n_subjects: int = 10, templates_per_subject: int = 3, seed: int = 3) -> Path:
    """IJB-C release layout (``root`` = ``IJB_release/IJBC``): loose crops with the face at a random
    similarity transform, its five landmarks and detector score, templates of 1-3 media with 1-3 images."""
    from PIL import Image

    from ..align import similarity_transform, warp_affine

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    faces, lms, tids = [], [], []
    img_no, media_no, tid = 1, 1, 1
    subject_of = {}
    for s, base in enumerate(_subjects(n_subjects, rng)):
        for _ in range(templates_per_subject):
            subject_of[tid] = s
            for _ in range(int(rng.integers(1, 4))):
                for _ in range(int(rng.integers(1, 4))):
                    face = face_image(base, rng, float(rng.random() ** 2))
                    # place the face in a bigger loose crop: invert a random similarity transform
                    ang, scale = rng.uniform(-0.3, 0.3), rng.uniform(1.2, 1.6)
                    shift = rng.uniform(10, 30, 2)
                    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * scale
                    pts = ARCFACE_TEMPLATE @ rot.T + shift
                    canvas_size = (int(TEMPLATE_SIZE[0] * scale + 60), int(TEMPLATE_SIZE[1] * scale + 60))
                    back = warp_affine(face, similarity_transform(ARCFACE_TEMPLATE, pts), canvas_size)
                    Image.fromarray(back).save(root / "loose_crop" / f"{img_no}.jpg", quality=92)
                    faces.append(f"{img_no}.jpg {tid} {media_no}")
                    lms.append(f"{img_no}.jpg " + " ".join(f"{v:.3f}" for v in pts.reshape(-1)) +
                               f" {rng.uniform(0.5, 1.0):.4f}")
                    img_no += 1
                media_no += 1
            tid += 1
    pairs = []
    ids = sorted(subject_of)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if subject_of[a] == subject_of[b] or rng.random() < 0.5:
                pairs.append(f"{a} {b} {int(subject_of[a] == subject_of[b])}")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(faces) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lms) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


def write_pair_list(data_dir, dataset: str = "lfw_list", n_subjects: int = 8, per_subject: int = 3,
                    seed: int = 4) -> Path:
    """CR-FIQA layout under ``data_dir/quality_data/<dataset>``: images/p_<subject>_img_<n>.jpg,
    ``image_path_list.txt`` relative to ``data_dir`` and an all-pairs ``pair_list.txt``; returns the list folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lists = Path(data_dir) / "quality_data" / dataset
    (lists / "images").mkdir(parents=True, exist_ok=True)
    names, subj = [], []
    n = 0
    for s, base in enumerate(_subjects(n_subjects, rng)):
        for _ in range(per_subject):
            name = f"p_{s}_img_{n}"
            Image.fromarray(face_image(base, rng, float(rng.random() ** 2))).save(lists / "images" / f"{name}.jpg",
                                                                               quality=92)
            names.append(name), subj.append(s)
            n += 1
    (lists / "image_path_list.txt").write_text(
        "\n".join(f"quality_data/{dataset}/images/{nm}.jpg" for nm in names) + "\n")
    lines = [f"{names[i]} {names[j]} {int(subj[i] == subj[j])}" for i in range(n) for j in range(i + 1, n)]
    (lists / "pair_list.txt").write_text("\n".join(lines) + "\n")
    return lists


def write_crfiqa_prepared(bin_path, data_dir, dataset: str | None = None, lossless: bool = False) -> Path:
    """CR-FIQA's prepared folder of an insightface ``.bin``, as ``feature_extraction/extract_bin.py`` writes it:
    each image decoded RGB (``mx.image.imdecode``) and written with ``cv2.imwrite``, which stores the array's
    channels as B, G, R, so the file holds the image channel-swapped; ``data_dir/quality_data/<dataset>/``
    with ``images/%05d.jpg``, ``image_path_list.txt`` (``quality_data/<dataset>/images/%05d.jpg``) and
    ``pair_list.txt`` (``np.savetxt(fmt='%05d')`` of ``[2i, 2i+1, issame]``). ``lossless``: PNG content under
    the same names (pixels exactly those of the ``.bin``), else JPEG (quality 95, OpenCV's default). Returns
    the list folder; load it with ``load_pair_list(data_dir, folder, ids="names", prepared="crfiqa")``."""
    from PIL import Image

    from .datasets import read_bin_pickle

    with open(bin_path, "rb") as f:
        bins, issame = read_bin_pickle(f, str(bin_path))
    dataset = dataset or Path(bin_path).stem
    out = Path(data_dir) / "quality_data" / dataset
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, data in enumerate(bins):
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        swapped = Image.fromarray(np.ascontiguousarray(rgb[..., ::-1]))  # what a reader decoding RGB gets back
        if lossless:
            swapped.save(out / "images" / f"{i:05d}.jpg", format="PNG")
        else:
            swapped.save(out / "images" / f"{i:05d}.jpg", format="JPEG", quality=95)
        lines.append(f"quality_data/{dataset}/images/{i:05d}.jpg")
    (out / "image_path_list.txt").write_text("\n".join(lines) + "\n")
    pairs = np.array([[2 * k, 2 * k + 1, int(s)] for k, s in enumerate(issame)])
    np.savetxt(out / "pair_list.txt", pairs, fmt="%05d")
    return out
