"""Procedurally rendered synthetic faces: a face-verification stand-in with thousands of identities, made on
the fly from seeds (no download, deterministic, vectorised NumPy).

An image is fixed by ``(identity, sample)``:

* the **identity** fixes what a face recogniser should recognise: head shape (width, height, jaw taper),
  skin tone, hair (colour, volume, hairline, long/short, bald), ears, eye spacing/height/size, iris colour,
  brows (height, thickness, tilt, colour), nose (length, width), mouth (width, height, lip thickness and
  colour), beard and a mole;
* the **sample** fixes the nuisance: pose (yaw, roll, shift, scale), expression (smile, open mouth, eye
  opening, brow raise), illumination (direction, strength, ambient level, colour cast), background (colour,
  gradient) and clothing colour, plus faint sensor noise.

Every random number comes from a counter-based hash of (namespace, identity, sample, parameter index), so an
image is the same whatever batch it is rendered in, and identities of different namespaces never coincide:
``TRAIN`` identities train the demo models, ``HELD_OUT`` identities are only ever used by the demo study.

Coordinates: face space with x to the right and y downwards, the head centred near the origin, the image
spanning [-1, 1] at scale 1. Shapes are soft-edged (one pixel of anti-aliasing) so that small renders stay
smooth.
"""
from __future__ import annotations

import numpy as np

from ..preprocess import DEFAULT_IMAGE_SIZE

TRAIN = 1          # identity namespace of the training identities
HELD_OUT = 2       # identity namespace of the demo's held-out identities

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

SKIN = np.array([(0.99, 0.87, 0.77), (0.95, 0.78, 0.64), (0.86, 0.66, 0.50), (0.72, 0.52, 0.37),
                 (0.55, 0.37, 0.25), (0.38, 0.25, 0.16), (0.26, 0.17, 0.11)], np.float32)
HAIR = np.array([(0.06, 0.05, 0.05), (0.22, 0.13, 0.07), (0.42, 0.27, 0.14), (0.78, 0.62, 0.34),
                 (0.62, 0.26, 0.10), (0.55, 0.55, 0.56), (0.88, 0.87, 0.84), (0.15, 0.10, 0.08)], np.float32)
CLOTH = np.array([(0.8, 0.1, 0.1), (0.1, 0.3, 0.7), (0.2, 0.6, 0.3), (0.9, 0.9, 0.9), (0.1, 0.1, 0.1),
                  (0.6, 0.5, 0.2), (0.5, 0.2, 0.6)], np.float32)
LIPS = np.array([(0.72, 0.32, 0.32), (0.60, 0.25, 0.28), (0.80, 0.45, 0.45), (0.50, 0.22, 0.20)], np.float32)
IRIS = np.array([(0.28, 0.16, 0.07), (0.18, 0.38, 0.66), (0.24, 0.46, 0.26), (0.45, 0.47, 0.52),
                 (0.10, 0.07, 0.05), (0.50, 0.35, 0.15)], np.float32)

# identity parameters: name -> (low, high) of a uniform draw
IDENTITY = {
    "face_w": (0.48, 0.64), "face_h": (0.64, 0.80), "jaw": (0.0, 0.35), "face_cy": (0.0, 0.08),
    "skin": (0.0, 1.0), "skin_red": (-0.04, 0.04),
    "hair_kind": (0.0, 1.0), "hair_jit": (-0.06, 0.06), "hair_vol": (0.02, 0.16), "hairline": (0.12, 0.42),
    "hair_side": (0.0, 0.9), "hair_long": (0.0, 1.0), "bald": (0.0, 1.0), "part": (-0.5, 0.5),
    "ear_h": (0.09, 0.16), "ear_y": (-0.10, 0.05),
    "eye_dx": (0.17, 0.29), "eye_y": (-0.12, 0.02), "eye_w": (0.065, 0.10), "eye_h": (0.38, 0.62),
    "iris": (0.0, 1.0), "iris_r": (0.45, 0.65),
    "brow_dy": (0.07, 0.14), "brow_th": (0.014, 0.036), "brow_tilt": (-0.35, 0.35), "brow_w": (0.08, 0.13),
    "brow_dark": (0.3, 1.0),
    "nose_len": (0.14, 0.26), "nose_w": (0.045, 0.10),
    "mouth_y": (0.26, 0.42), "mouth_w": (0.13, 0.26), "lip": (0.016, 0.045), "lip_col": (0.0, 1.0),
    "beard": (0.0, 1.0), "mole": (0.0, 1.0), "mole_x": (-0.35, 0.35), "mole_y": (-0.05, 0.40),
}
# nuisance parameters of one image
NUISANCE = {
    "yaw": (-0.55, 0.55), "roll": (-0.26, 0.26), "tx": (-0.07, 0.07), "ty": (-0.07, 0.07), "scale": (0.88, 1.10),
    "smile": (-0.4, 1.0), "open": (0.0, 1.0), "eye_open": (0.55, 1.15), "brow_up": (-0.02, 0.035),
    "light_a": (0.0, 2 * np.pi), "light_k": (0.15, 0.65), "ambient": (0.62, 1.12), "tint_r": (-0.07, 0.07),
    "tint_b": (-0.07, 0.07), "bg_r": (0.05, 0.95), "bg_g": (0.05, 0.95), "bg_b": (0.05, 0.95),
    "bg_grad": (-0.35, 0.35), "bg_ang": (0.0, 2 * np.pi), "cloth": (0.0, 1.0), "cloth_v": (0.15, 0.9),
    "noise": (0.0, 0.02), "noise_seed": (0.0, 1.0),
}


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _uniforms(keys: np.ndarray, n: int) -> np.ndarray:
    """[B] uint64 keys -> [B, n] independent uniforms in [0, 1)."""
    with np.errstate(over="ignore"):
        k = _mix(keys[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None] * _GOLDEN)
    return (k >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _keys(namespace: int, identities: np.ndarray, samples: np.ndarray | None) -> np.ndarray:
    ids = np.asarray(identities, dtype=np.int64)
    if ids.ndim != 1 or (ids < 0).any():
        raise ValueError("identities must be a 1-D array of non-negative integers")
    with np.errstate(over="ignore"):
        k = _mix(np.uint64(namespace) * _GOLDEN + ids.astype(np.uint64))
        if samples is not None:
            s = np.asarray(samples, dtype=np.int64)
            if s.shape != ids.shape or (s < 0).any():
                raise ValueError("samples must be non-negative integers, one per identity entry")
            k = _mix(k ^ (s.astype(np.uint64) * _M1 + np.uint64(0x632BE59BD9B4E019)))
    return k


def _draw(spec: dict, keys: np.ndarray) -> dict[str, np.ndarray]:
    u = _uniforms(keys, len(spec))
    return {name: (lo + (hi - lo) * u[:, i]).astype(np.float32)[:, None, None]
            for i, (name, (lo, hi)) in enumerate(spec.items())}


_NOISE_FIELDS = 16
_NOISE: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    """A fixed bank of unit Gaussian noise fields per render size; an image picks one by its nuisance draw
    (so its noise does not depend on its batch mates)."""
    if size not in _NOISE:
        _NOISE[size] = np.random.default_rng(size).standard_normal((_NOISE_FIELDS, size, size, 3), dtype=np.float32)
    return _NOISE[size]


def _palette(table: np.ndarray, t: np.ndarray, smooth: bool) -> np.ndarray:
    """Colour [B,1,1,3] from a palette: interpolated (smooth) or picked (discrete), t in [0,1)."""
    t = t.reshape(-1)
    if smooth:
        pos = t * (len(table) - 1)
        i = np.minimum(pos.astype(int), len(table) - 2)
        f = (pos - i)[:, None]
        c = table[i] * (1 - f) + table[i + 1] * f
    else:
        c = table[np.minimum((t * len(table)).astype(int), len(table) - 1)]
    return c.astype(np.float32)[:, None, None, :]


def _ellipse(x, y, cx, cy, rx, ry, px):
    """Soft mask of an axis-aligned ellipse: 1 inside, 0 outside, a one-pixel ramp on the edge (px: pixels
    per face unit, [B,1,1])."""
    q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1.0 - q) * (np.minimum(rx, ry) * px) + 0.5, 0.0, 1.0)


class _Pose:
    """Per-image roll, shift and scale: image coordinates <-> face coordinates, and image windows."""

    def __init__(self, n: dict, size: int):
        self.cr, self.sr = np.cos(n["roll"]), np.sin(n["roll"])
        self.tx, self.ty, self.s = n["tx"], n["ty"], n["scale"]
        self.size = size
        self.px = self.s * (size / 2)  # pixels per face unit

    def face_coords(self, X, Y):
        """Image coordinates in [-1, 1] -> face coordinates (inverse roll about the centre, shift, scale)."""
        xs, ys = X - self.tx, Y - self.ty
        return (self.cr * xs + self.sr * ys) / self.s, (-self.sr * xs + self.cr * ys) / self.s

    def window(self, cx, cy, hx: float, hy: float):
        """Pixel rows/cols [B,h], [B,w] of an image-aligned window holding the face-space rectangle
        (cx +- hx, cy +- hy) [B,1,1] under every image's pose; small features are painted there only."""
        S = self.size
        cx, cy = cx.reshape(-1), cy.reshape(-1)
        s, cr, sr = self.s.reshape(-1), np.abs(self.cr.reshape(-1)), np.abs(self.sr.reshape(-1))
        cxi = s * (self.cr.reshape(-1) * cx - self.sr.reshape(-1) * cy) + self.tx.reshape(-1)
        cyi = s * (self.sr.reshape(-1) * cx + self.cr.reshape(-1) * cy) + self.ty.reshape(-1)
        ext_x = float((s * (hx * cr + hy * sr)).max()) * S / 2
        ext_y = float((s * (hx * sr + hy * cr)).max()) * S / 2
        w, h = min(S, int(np.ceil(2 * ext_x)) + 3), min(S, int(np.ceil(2 * ext_y)) + 3)
        c0 = np.clip(np.round((cxi + 1) * S / 2 - 0.5 - w / 2), 0, S - w).astype(np.intp)
        r0 = np.clip(np.round((cyi + 1) * S / 2 - 0.5 - h / 2), 0, S - h).astype(np.intp)
        return r0[:, None] + np.arange(h), c0[:, None] + np.arange(w)


class _Layer:
    """Where to paint: the whole canvas, or a gathered window of it (written back by :meth:`commit`)."""

    def __init__(self, img: np.ndarray, pose: _Pose, rows=None, cols=None):
        S = pose.size
        self.full, self.rows, self.cols = img, rows, cols
        if rows is None:
            grid = (np.arange(S, dtype=np.float32) + 0.5) / S * 2 - 1
            X, Y = grid[None, None, :], grid[None, :, None]
            self.img = img
        else:
            X = ((cols.astype(np.float32) + 0.5) / S * 2 - 1)[:, None, :]
            Y = ((rows.astype(np.float32) + 0.5) / S * 2 - 1)[:, :, None]
            self.idx = (np.arange(len(img))[:, None, None], rows[:, :, None], cols[:, None, :])
            self.img = img[self.idx]
        self.X, self.Y = X, Y
        self.x, self.y = pose.face_coords(X, Y)

    def paint(self, mask: np.ndarray, colour) -> None:
        """Alpha-blend ``colour`` ([B,1,1,3] or per pixel) where ``mask`` [B,h,w] in [0,1]."""
        self.img += mask[..., None] * (colour - self.img)

    def commit(self) -> None:
        if self.rows is not None:
            self.full[self.idx] = self.img


def render_faces(identities, samples, size: int = DEFAULT_IMAGE_SIZE[0], namespace: int = TRAIN) -> np.ndarray:
    """Render faces -> uint8 [B, size, size, 3] RGB. ``identities`` and ``samples`` are equal-length integer
    arrays; the same (namespace, identity, sample) always gives the same image."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError("size must be an integer >= 16")
    ids = np.asarray(identities).reshape(-1)
    smp = np.asarray(samples).reshape(-1)
    if len(ids) == 0:
        raise ValueError("no identities given")
    p = _draw(IDENTITY, _keys(namespace, ids, None))
    n = _draw(NUISANCE, _keys(namespace, ids, smp))
    B, S = len(ids), int(size)
    pose = _Pose(n, S)
    px = pose.px
    img = np.empty((B, S, S, 3), np.float32)
    full = _Layer(img, pose)
    x, y, X, Y = full.x, full.y, full.X, full.Y

    # background: colour with a linear gradient
    bg = np.stack([n["bg_r"], n["bg_g"], n["bg_b"]], axis=-1)
    ramp = (np.cos(n["bg_ang"]) * X + np.sin(n["bg_ang"]) * Y) * n["bg_grad"]
    img[:] = np.clip(bg + ramp[..., None], 0, 1)

    skin = _palette(SKIN, p["skin"], smooth=True) + np.stack(
        [p["skin_red"], np.zeros_like(p["skin_red"]), -p["skin_red"]], -1)
    hair = np.clip(_palette(HAIR, p["hair_kind"], smooth=False) + p["hair_jit"][..., None], 0, 1)
    bald = p["bald"] < 0.08
    long_hair = (p["hair_long"] > 0.65) & ~bald

    # Yaw: a feature at frontal x-offset fx and depth d (fraction of the head half-width towards the camera)
    # projects to fx*cos(yaw) + d*face_w*sin(yaw); the head outline stays (a cylinder seen from the side).
    cy_, sy_ = np.cos(n["yaw"]), np.sin(n["yaw"])
    fw, fh, fcy = p["face_w"], p["face_h"], p["face_cy"]

    def proj(fx, depth):
        return fx * cy_ + depth * fw * sy_

    # light direction (in the image plane); Lambert shading on a pseudo-normal of the head ellipsoid
    lx, ly = np.cos(n["light_a"]) * n["light_k"], np.sin(n["light_a"]) * n["light_k"]

    def head_fields(x, y):
        below = np.clip((y - fcy) / fh, 0, 1)
        nx, ny = x / (fw * (1.0 - p["jaw"] * below * below)), (y - fcy) / fh
        q = np.sqrt(nx * nx + ny * ny)
        nz = np.sqrt(np.clip(1.0 - q * q, 0, 1))
        shade = np.clip(n["ambient"] * (0.75 + 0.25 * nz) + (nx * lx + ny * ly) * 0.9, 0.15, 1.6)
        return nx, ny, q, shade

    # clothes / shoulders and neck
    cloth = _palette(CLOTH, n["cloth"], smooth=False)
    full.paint(_ellipse(x, y, 0.0, fcy + fh + 0.55, 1.1, 0.45, px), cloth * n["cloth_v"][..., None] * 1.2)
    neck = np.clip((0.55 * fw - np.abs(x - proj(0.0, 0.3))) * px + 0.5, 0, 1) * np.clip((y - fcy) * px, 0, 1) \
        * np.clip((fcy + fh + 0.35 - y) * px, 0, 1)
    full.paint(neck, skin * 0.78)
    if long_hair.any():
        lh = _ellipse(x, y, 0.0, fcy + 0.15, fw + p["hair_vol"] + 0.04, fh + 0.18, px) * long_hair
        full.paint(lh, hair * 0.8)
    # ears (behind the head outline, at the sides, moving against the yaw)
    for side in (-1.0, 1.0):
        ex, ey = proj(side * fw * 0.97, -0.25), fcy + p["ear_y"]
        w = _Layer(img, pose, *pose.window(ex, ey, 0.08, 0.17))
        w.paint(_ellipse(w.x, w.y, ex, ey, 0.07, p["ear_h"], px), skin * 0.9)
        w.commit()
    # head: ellipse with a tapering jaw, shaded
    nx, ny, q, shade = head_fields(x, y)
    head = np.clip((1.0 - q) * (fw * px) + 0.5, 0, 1)
    full.paint(head, skin * shade[..., None])
    # beard
    beard = (p["beard"] > 0.86) & ~bald
    if beard.any():
        bm = head * np.clip((y - (fcy + p["mouth_y"] - 0.1)) * px * 0.25, 0, 1) * beard
        full.paint(bm * 0.85, hair * shade[..., None])
    # hair on top: inside a larger ellipse, above a hairline that drops at the sides
    if (~bald).any():
        hx, hy = x / (fw + p["hair_vol"]), (y - fcy + 0.02) / (fh + p["hair_vol"])
        outer = np.clip((1.0 - np.sqrt(hx * hx + hy * hy)) * (fw * px) + 0.5, 0, 1)
        line = fcy - fh + p["hairline"] + p["hair_side"] * np.abs((x - p["part"] * 0.1) / fw) ** 3 * 0.6
        top = outer * np.clip((line - y) * px + 0.5, 0, 1) * ~bald
        hshade = np.clip(n["ambient"] * 0.9 + (nx * lx + ny * ly) * 0.7, 0.15, 1.5)
        full.paint(top, hair * hshade[..., None])
    # mole
    mole = p["mole"] > 0.7
    if mole.any():
        mx, my = proj(p["mole_x"] * fw, 0.5), fcy + p["mole_y"]
        w = _Layer(img, pose, *pose.window(mx, my, 0.03, 0.03))
        w.paint(_ellipse(w.x, w.y, mx, my, 0.018, 0.018, px) * mole * 0.8, skin * 0.35)
        w.commit()
    # eyes: white, iris, pupil; brows above them
    iris_col = _palette(IRIS, p["iris"], smooth=False)
    eh = p["eye_w"] * p["eye_h"] * n["eye_open"]
    brow_col = hair * p["brow_dark"][..., None] + (1 - p["brow_dark"][..., None]) * skin * 0.4
    white_col = np.array([0.93, 0.92, 0.90], np.float32)
    for side in (-1.0, 1.0):
        ex, ey = proj(side * p["eye_dx"], 0.62), fcy + p["eye_y"]
        w = _Layer(img, pose, *pose.window(ex, ey - 0.07, 0.17, 0.17))
        sh = head_fields(w.x, w.y)[3][..., None]
        ew = p["eye_w"] * (1.0 - 0.35 * np.abs(sy_) * (side * sy_ < 0))  # the far eye narrows
        white = _ellipse(w.x, w.y, ex, ey, ew, eh, px)
        w.paint(white, white_col * sh)
        ir = p["eye_w"] * p["iris_r"] * 0.55
        w.paint(white * _ellipse(w.x, w.y, ex + 0.3 * ew * sy_, ey, ir, ir, px), iris_col)
        w.paint(white * _ellipse(w.x, w.y, ex + 0.3 * ew * sy_, ey, ir * 0.45, ir * 0.45, px), 0.03)
        # brow: a thin ellipse rotated by its tilt (mirrored per side)
        bx, by = ex, ey - p["brow_dy"] - n["brow_up"]
        t = p["brow_tilt"] * side
        ct, st = np.cos(t), np.sin(t)
        u, v = ct * (w.x - bx) + st * (w.y - by), -st * (w.x - bx) + ct * (w.y - by)
        w.paint(_ellipse(u, v, 0.0, 0.0, p["brow_w"] * (ew / p["eye_w"]), p["brow_th"], px) * 0.9, brow_col * sh)
        w.commit()
    # nose: a shadowed ridge on the side away from the light, and nostrils
    nx0, ny0 = proj(0.0, 1.0), fcy + p["eye_y"] + 0.05
    ntip = ny0 + p["nose_len"]
    w = _Layer(img, pose, *pose.window(nx0, ny0 + 0.15, 0.13, 0.18))
    ridge = _ellipse(w.x, w.y, nx0 - 0.35 * p["nose_w"] * np.sign(lx + 1e-6), (ny0 + ntip) / 2, p["nose_w"] * 0.35,
                     p["nose_len"] / 2, px)
    w.paint(ridge * 0.35, skin * 0.55)
    w.paint(_ellipse(w.x, w.y, nx0, ntip, p["nose_w"], p["nose_w"] * 0.45, px) * 0.5, skin * 0.75)
    for side in (-1.0, 1.0):
        w.paint(_ellipse(w.x, w.y, nx0 + side * p["nose_w"] * 0.5, ntip + 0.01, p["nose_w"] * 0.28, 0.012, px) * 0.8,
                skin * 0.3)
    w.commit()
    # mouth: a curved band (smile bends it), opened by a dark gap
    mx, my, mw = proj(0.0, 0.75), fcy + p["mouth_y"], p["mouth_w"] * (0.9 + 0.15 * n["smile"])
    w = _Layer(img, pose, *pose.window(mx, my + 0.02, 0.29, 0.13))
    sh = head_fields(w.x, w.y)[3][..., None]
    dx = (w.x - mx) / mw
    inside = np.clip(1.0 - dx * dx, 0, 1)
    yc = my + 0.035 * n["smile"] * inside
    gap = 0.04 * n["open"] * inside
    lips = _palette(LIPS, p["lip_col"], smooth=True) * 0.5 + skin * 0.5
    half = p["lip"] * np.sqrt(inside) + gap
    mouth = np.clip((half - np.abs(w.y - yc)) * px + 0.5, 0, 1) * np.clip((1.0 - np.abs(dx)) * mw * px + 0.5, 0, 1)
    w.paint(mouth, lips * sh)
    w.paint(np.clip((gap - np.abs(w.y - yc)) * px + 0.5, 0, 1) * (gap > 0), np.float32(0.12))
    w.commit()
    # global illumination colour cast and sensor noise
    img *= np.stack([1 + n["tint_r"], np.ones_like(n["tint_r"]), 1 + n["tint_b"]], -1)
    img += _noise_bank(S)[(n["noise_seed"].reshape(-1) * _NOISE_FIELDS).astype(int)] * n["noise"][..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
