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
