"""Image files that cannot be used are skips with a reason, never the end of a run; high-bit-depth images are
scaled to 8 bit by their range, not clipped. Every file here is written by the test."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vitfiqa.cli import main
from vitfiqa.loader import load_uint8
from vitfiqa.options import DEFAULT_MAX_PIXELS
from vitfiqa.preprocess import pil_to_rgb, read_image
from vitfiqa.results import read_scores


def png_bytes(width, height, bit_depth, colour_type, raw_rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor a header that lies about its size)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def rgb16_png(arr: np.ndarray) -> bytes:
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    return png_bytes(w, h, 16, 2, rows)


GRADIENT16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(GRADIENT16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert np.asarray(Image.open(tmp_path / "g16.png").convert("RGB")).mean() > 254  # what clipping did
    got = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(got[..., 0], np.rint(GRADIENT16 / 257.0).astype(np.uint8))
    assert (got[..., 0] == got[..., 2]).all() and got.dtype == np.uint8


def test_16_bit_rgb_png(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(rgb16_png(arr))
    got = read_image(tmp_path / "rgb16.png").astype(int)
    assert np.abs(got - arr / 257.0).max() <= 1.0  # Pillow keeps the high byte: x // 256, within 1 of x / 257


def test_32_bit_int_and_float_images(tmp_path):
    Image.fromarray(GRADIENT16.astype(np.int32), mode="I").save(tmp_path / "i16.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "i16.tif")[..., 1], np.rint(GRADIENT16 / 257.0))
    wide = GRADIENT16.astype(np.int32) * 40 - 100_000  # beyond 16 bits: the image's own range
    Image.fromarray(wide, mode="I").save(tmp_path / "i32.tif")
    got = read_image(tmp_path / "i32.tif")[..., 0]
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(got, np.rint((wide - wide.min()) * 255.0 / (wide.max() - wide.min())))
    unit = (GRADIENT16 / 65535.0).astype(np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 2], np.rint(unit.astype(np.float64) * 255))
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="NaN"):
        read_image(tmp_path / "nan.tif")


def test_eight_bit_images_are_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), np.repeat(rgb[..., :1], 3, axis=2))


def test_pixel_limit_is_read_from_the_header(tmp_path):
    # 8000 x 8000 claimed, a few bytes of data: refused before any pixel is decoded.
    (tmp_path / "big.png").write_bytes(png_bytes(8000, 8000, 8, 2, b"\x00" * 10))
    with pytest.raises(ValueError, match="8000x8000 = 64.0 MP is above the limit of 40.0 MP"):
        read_image(tmp_path / "big.png")
    with pytest.raises(ValueError, match="cannot read image"):  # no limit: decoding starts, finds no data
        read_image(tmp_path / "big.png", max_pixels=None)
    # 20000 x 20000: above Pillow's own limit too; vitfiqa's limit is the only one, so None lifts both
    (tmp_path / "bomb.png").write_bytes(png_bytes(20000, 20000, 8, 2, b"\x00" * 10))
    with pytest.raises(ValueError, match="20000x20000 = 400.0 MP is above the limit of 40.0 MP"):
        read_image(tmp_path / "bomb.png")
    pil_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="cannot read image"):  # decoding starts (no bomb error), finds no data
        read_image(tmp_path / "bomb.png", max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # Pillow's limit is restored after the decode
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="above the limit of 0.0 MP"):
        read_image(tmp_path / "small.png", max_pixels=899)
    assert read_image(tmp_path / "small.png", max_pixels=900).shape == (30, 30, 3)
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_no_limit_lifts_pillows_limit_too(tmp_path, monkeypatch):
    """--max-pixels 0 / max_pixels=None decodes an image above Pillow's own bomb limit (lowered here so the
    image stays small), and leaves Pillow's limit as it was."""
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1600 px > 2 x 500: Pillow alone refuses it
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", max_pixels=None).shape == (40, 40, 3)
    assert read_image(tmp_path / "a.png", max_pixels=1600).shape == (40, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 500


def test_unsupported_mode_is_a_value_error():
    with pytest.raises(ValueError, match="not supported"):
        pil_to_rgb(Image.new("La", (4, 4)))
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(b"\x89PNG\r\n\x1a\n garbage")
    assert load_uint8(Image.new("I;16", (8, 8), 65535), (4, 4)).min() == 255


def test_score_skips_every_kind_of_bad_file_with_its_reason(tmp_path, model_cases):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(imgs / "a_good.png")
    (imgs / "b_bomb.png").write_bytes(png_bytes(20000, 20000, 8, 2, b"\x00" * 10))
    (imgs / "b_big.png").write_bytes(png_bytes(8000, 8000, 8, 2, b"\x00" * 10))
    full = imgs / "c_full.jpg"
    Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(full, quality=90)
    (imgs / "c_truncated.jpg").write_bytes(full.read_bytes()[:600])
    (imgs / "d_text.png").write_bytes(b"not an image at all")
    Image.fromarray(GRADIENT16).save(imgs / "e_grey16.png")
    (imgs / "f_rgb16.png").write_bytes(rgb16_png(rng.integers(0, 65536, (50, 40, 3), dtype=np.uint16)))
    (imgs / "g_empty.png").write_bytes(b"")
    out = tmp_path / "s.csv"
    argv = ["-q", "score", "--model", model_cases["insightface-script"].path, "--images", str(imgs),
            "--out", str(out), "--batch-size", "3"]
    assert main(argv) == 0
    frame = read_scores(out)
    err = dict(zip(frame["path"].map(lambda p: p.rsplit("/", 1)[1]), frame["error"]))
    assert [k for k, v in err.items() if not v] == ["a_good.png", "c_full.jpg", "e_grey16.png", "f_rgb16.png"]
    assert "400.0 MP is above the limit" in err["b_bomb.png"] and "above the limit" in err["b_big.png"]
    assert "truncated" in err["c_truncated.jpg"]
    assert "cannot identify" in err["d_text.png"] and "cannot identify" in err["g_empty.png"]
    assert frame.loc[frame["error"] != "", "attn"].isna().all() and frame.loc[frame["error"] == "", "attn"].notna().all()
    # --max-pixels is part of the run: the bomb cannot be let in by resuming with another limit.
    assert main(argv + ["--max-pixels", "0"]) == 2
    assert main(argv + ["--max-pixels", "0", "--overwrite"]) == 0
    lifted = read_scores(out)["error"]
    # b_big and b_bomb (above Pillow's own limit too): let in, then found to hold no data; no bomb message
    assert "cannot read image" in lifted[1] and "cannot read image" in lifted[2] and "decompression" not in lifted[2]
