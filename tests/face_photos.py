"""Photos for the face-stage tests, made from scikit-image's samples: ``astronaut`` (Eileen Collins, NASA;
public domain) and ``coffee`` (no face; CC0), composed here into a tiny face and a three-face group."""
from pathlib import Path

import numpy as np
from PIL import Image


def make_photos(root: Path) -> Path:
    from skimage import data

    astro = data.astronaut()
    Image.fromarray(astro).save(root / "astronaut.jpg", quality=95)
    Image.fromarray(data.coffee()).save(root / "coffee.jpg", quality=95)
    # the same face, shrunk until its eyes are ~9 px apart: found, but too small to align
    Image.fromarray(astro).resize((96, 96), Image.BILINEAR).save(root / "tiny.png")
    # a group: three copies of the face on a wide canvas, the middle one nearest the centre
    face = astro[20:300, 120:360]
    canvas = np.full((420, 1000, 3), 90, np.uint8)
    for x0 in (30, 380, 730):
        canvas[70:350, x0:x0 + 240] = face
    Image.fromarray(canvas).save(root / "group.png")
    return root
