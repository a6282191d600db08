"""Five-landmark alignment to the ArcFace template."""
import numpy as np
import pytest

from vitfiqa.align import ARCFACE_TEMPLATE, FaceCrop, align_face, similarity_transform, template
from vitfiqa.loader import load_uint8


def rotation(deg, scale, shift):
    t = np.deg2rad(deg)
    m = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * scale
    return np.hstack([m, np.asarray(shift, float)[:, None]])


def test_similarity_transform_recovers_known_transform():
    m = rotation(17.0, 1.7, (40.0, -12.0))
    src = ARCFACE_TEMPLATE
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)
    # Noisy points: the least-squares fit has a smaller squared error than the true transform.
    noisy = dst + np.random.default_rng(0).normal(0, 0.5, dst.shape)
    fit = similarity_transform(src, noisy)
    res = ((src @ fit[:, :2].T + fit[:, 2] - noisy) ** 2).sum()
    assert res < ((src @ m[:, :2].T + m[:, 2] - noisy) ** 2).sum()
    # A mirrored point set is fitted by a rotation, never a reflection.
    assert np.linalg.det(similarity_transform(src, src * [-1, 1])[:, :2]) > 0


def test_align_face_puts_landmarks_on_the_template():
    """A photo whose five landmarks sit at a rotated, scaled, shifted copy of the template: after alignment a
    bright dot drawn at the photo's nose lands on the template's nose."""
    m = rotation(-25.0, 2.2, (60.0, 35.0))
    lm = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    img = np.zeros((320, 300, 3), np.uint8)
    x, y = np.round(lm[2]).astype(int)
    img[y - 3:y + 4, x - 3:x + 4] = 255
    out = align_face(img, lm)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    w = out[:, :, 0].astype(float)
    yy, xx = np.mgrid[:112, :112]
    centre = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
    # the dot's centre was rounded to whole pixels of the photo (scale 2.2): within 0.5 px of the template
    np.testing.assert_allclose(centre, ARCFACE_TEMPLATE[2] + (np.round(lm[2]) - lm[2]) @ np.linalg.inv(m[:, :2]).T,
                               atol=0.5)
    # FaceCrop goes through the package's image loader (path or bytes source).
    np.testing.assert_array_equal(load_uint8(FaceCrop(img, lm), (112, 112)), out)
    np.testing.assert_allclose(template((224, 224)), ARCFACE_TEMPLATE * 2)


@pytest.mark.parametrize("lm, msg", [(np.zeros((4, 2)), "five"), (np.zeros((5, 2)), "coincide"),
                                     (np.full((5, 2), np.nan), "NaN")])
def test_bad_landmarks(lm, msg):
    with pytest.raises(ValueError, match=msg):
        align_face(np.zeros((50, 50, 3), np.uint8), lm)


def _insightface_matrix(lm):
    """insightface's face_align.estimate_norm re-derived: scikit-image's SimilarityTransform fitted from the
    float32 landmarks onto the float32 ArcFace template (the reference, not our code)."""
    trans = pytest.importorskip("skimage.transform")
    dst = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                    [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
    t = trans.SimilarityTransform()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # estimate() is deprecated in newer scikit-image
        t.estimate(np.asarray(lm, dtype=np.float32), dst * 1.0)
    return t.params[0:2, :]


def test_ijbc_alignment_equals_insightface_pixels(tmp_path):
    """The IJB-C loader's alignment (a landmark line -> FaceCrop -> the package's image loader) gives exactly
    the pixels of insightface's evaluation: its estimate on the same float32 landmarks, then
    cv2.warpAffine(..., borderValue=0.0). Landmarks reach past the loose crop, so the black border is tested."""
    cv2 = pytest.importorskip("cv2")
    from PIL import Image

    from vitfiqa.align import estimate_norm
    from vitfiqa.eval.datasets import read_ijbc_landmarks

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "1.png")
    lines = []
    for k in range(40):
        m = rotation(rng.uniform(-40, 40), rng.uniform(0.6, 2.0), rng.uniform(-30, 60, 2))
        lm = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2] + rng.normal(0, 2, (5, 2))
        lines.append("1.png " + " ".join(f"{v:.3f}" for v in lm.reshape(-1)) + " 0.9")
    (tmp_path / "lm.txt").write_text("\n".join(lines) + "\n")
    names, lms, _ = read_ijbc_landmarks(tmp_path / "lm.txt")
    worst = border = 0
    for line, lm in zip(lines, lms):
        ref_lm = np.array([float(v) for v in line.split()[1:-1]], dtype=np.float32).reshape(5, 2)  # as ijb_11.py
        m_ref = _insightface_matrix(ref_lm)
        np.testing.assert_array_equal(estimate_norm(lm), m_ref)
        ref = cv2.warpAffine(img, m_ref, (112, 112), borderValue=0.0)
        ours = load_uint8(FaceCrop(str(tmp_path / "1.png"), lm), (112, 112))
        worst = max(worst, int(np.abs(ours.astype(int) - ref).max()))
        border += int((ref == 0).all(axis=2).any())
    assert worst == 0
    assert border > 5  # several crops reach past the image: the black border is compared too


def test_template_follows_insightface_sizes():
    np.testing.assert_allclose(template((112, 112)), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template((128, 128)), ARCFACE_TEMPLATE + [8.0, 0.0])
    np.testing.assert_allclose(template((256, 256)), ARCFACE_TEMPLATE * 2 + [16.0, 0.0])
