"""Models carry their input contract (image size, channel order, normalisation) in the TorchScript file; load,
the pipeline, the CLI and Ray read it; explicit options win; without a record the patch grid decides."""
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import vitfiqa
from vitfiqa.cli import main
from vitfiqa.models import FaceViT, ViTFIQA, export_torchscript, read_input_contract
from vitfiqa.pipeline import score_frame

from .models.cases import spread
from .tolerances import assert_batch_close


def small(cls=FaceViT, size=32, patch=8):
    torch.manual_seed(0)
    return spread(cls(img_size=size, patch_size=patch, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                      num_features=16))


@pytest.fixture(scope="module")
def bgr_model(tmp_path_factory):
    """A 32x32 quality-token model recorded as BGR with its own normalisation."""
    path = tmp_path_factory.mktemp("contract") / "bgr.pt"
    contract = {"image_size": [32, 32], "channel_order": "bgr",
                "normalization": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}}
    return export_torchscript(small(ViTFIQA), str(path), input_contract=contract), contract


@pytest.fixture(scope="module")
def faces():
    return np.random.default_rng(0).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)


def manual(images, contract):
    """The preprocessing written out: resize, channel order, (x/255 - mean) / std."""
    h, w = contract["image_size"]
    arr = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    if contract["channel_order"] == "bgr":
        x = x.flip(1)
    mean = torch.tensor(contract["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(contract["normalization"]["std"]).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def test_record_is_read_and_used(bgr_model, faces):
    path, contract = bgr_model
    assert read_input_contract(path) == contract
    assert read_input_contract(open(path, "rb").read()) == contract  # from bytes too
    m = vitfiqa.load(path)
    assert m.image_size == (32, 32) and m.channel_order == "bgr"
    assert m.input_contract["source"] == {"image_size": "model record", "channel_order": "model record",
                                          "normalization": "model record"}
    got = m.score(list(faces), methods=("attn", "vitnt", "vitfiqa"))
    want = m.score(manual(faces, contract), methods=("attn", "vitnt", "vitfiqa"))
    for k in want.scores:
        torch.testing.assert_close(got.scores[k], want.scores[k], rtol=1e-6, atol=1e-9)
    # the channel order matters for this model: RGB input gives other scores
    rgb = m.score(manual(faces, {**contract, "channel_order": "rgb"}), methods=("attn",))
    assert not torch.allclose(rgb.scores["attn"], want.scores["attn"])


def test_explicit_options_win(bgr_model, faces):
    path, contract = bgr_model
    m = vitfiqa.load(path, channel_order="rgb", image_size=32)
    assert m.channel_order == "rgb" and m.input_contract["source"]["channel_order"] == "argument"
    got = m.score(list(faces), methods=("attn",))
    want = m.score(manual(faces, {**contract, "channel_order": "rgb"}), methods=("attn",))
    torch.testing.assert_close(got.scores["attn"], want.scores["attn"], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="channel_order must be 'rgb' or 'bgr'"):
        vitfiqa.load(path, channel_order="BGR ")


def test_channel_order_option_on_a_model_without_record(model_cases, faces):
    case = model_cases["insightface-script"]
    rgb, bgr = vitfiqa.load(case.path), vitfiqa.load(case.path, channel_order="bgr")
    flipped = [np.ascontiguousarray(im[:, :, ::-1]) for im in faces]
    torch.testing.assert_close(bgr.score(list(faces)).scores["attn"], rgb.score(flipped).scores["attn"])


@pytest.mark.parametrize("family", ["insightface", "cvlface", "vitfiqa_token", "vitfiqa_crfiqa", "timm"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_size_from_the_patch_grid_without_record(model_cases, family, how):
    case = model_cases[f"{family}-{how}"]
    m = vitfiqa.load(case.path)
    assert m.image_size == (case.image_size, case.image_size)  # insightface: patch 9 x 12 -> the standard 112
    assert m.input_contract["source"]["image_size"] == "patch grid in the graph"
    assert m.channel_order == "rgb" and m.input_contract["source"]["channel_order"] == "default"


class NoPositionEmbedding(torch.nn.Module):
    """Attention over conv patches with no learned position embedding: the grid cannot be read off."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 16, 8, 8)
        self.blocks = torch.nn.ModuleList([FaceViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                                   num_features=8).blocks[0]])
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            t = b(t)
        return self.norm(t).mean(1)


def test_unknown_size_is_a_clear_error(tmp_path, faces):
    path = export_torchscript(NoPositionEmbedding(), str(tmp_path / "nopos.pt"))
    m = vitfiqa.load(path)
    m.score(torch.randn(2, 3, 32, 32), methods=("attn",))  # prepared tensors need no size
    with pytest.raises(ValueError, match="image_size=.*--image-size"):
        m.score(list(faces), methods=("attn",))
    assert vitfiqa.load(path, image_size=32).score(list(faces), methods=("attn",)).scores["attn"].shape == (5,)
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(faces[0]).save(d / "a.png")
    assert main(["-q", "score", "--model", path, "--images", str(d), "--out", str(tmp_path / "s.csv")]) == 2


def test_bad_records_are_refused(tmp_path):
    path = export_torchscript(small(), str(tmp_path / "m.pt"))
    assert read_input_contract(path) is None
    for bad, msg in ((b"{not json", "not valid JSON"), (json.dumps({"image_size": [0, 3]}).encode(), "image_size"),
                     (json.dumps({"channel_order": "grb"}).encode(), "channel_order"),
                     (json.dumps({"normalization": {"mean": [0.5], "std": [1, 1, 1]}}).encode(), "normalization"),
                     (json.dumps({"resize": "area"}).encode(), "unknown input contract keys")):
        ts = torch.jit.load(path)
        buf = io.BytesIO()
        torch.jit.save(ts, buf, _extra_files={"vitfiqa_input.json": bad})
        with pytest.raises(ValueError, match=msg):
            vitfiqa.load(buf.getvalue())
    with pytest.raises(ValueError, match="channel_order"):
        export_torchscript(small(), str(tmp_path / "x.pt"), input_contract={"channel_order": "rgba"})
    assert zipfile.is_zipfile(path)


def test_pipeline_cli_and_embedded_default(bgr_model, faces, tmp_path):
    path, contract = bgr_model
    d = tmp_path / "imgs"
    d.mkdir()
    files = []
    for i, im in enumerate(faces):
        files.append(str(d / f"{i}.png"))
        Image.fromarray(im).save(files[-1])
    m = vitfiqa.load(path)
    frame = score_frame(m, files, ("attn", "vitfiqa"), batch_size=2)
    direct = m.score(files, methods=("attn", "vitfiqa"))
    network = torch.jit.load(path)  # batch 2 against one batch: equal within the float32 bound
    assert_batch_close(frame["attn"].to_numpy(), direct.numpy()["attn"], network, "attn")
    # CLI: the record decides; --channel-order overrides it
    for extra, order in (([], "bgr"), (["--channel-order", "rgb"], "rgb")):
        out = tmp_path / f"s_{order}.csv"
        assert main(["-q", "score", "--model", path, "--images", str(d), "--methods", "attn", "--out", str(out),
                     *extra]) == 0
        want = vitfiqa.load(path, channel_order=order).score(sorted(files), methods=("attn",)).numpy()["attn"]
        assert_batch_close(pd.read_csv(out)["attn"].to_numpy(), want, network, "attn")
    # without --model: the embedded recogniser and its recorded 112x112 contract
    out = tmp_path / "default.csv"
    assert main(["-q", "score", "--images", str(d), "--out", str(out)]) == 0
    want = vitfiqa.load().score(sorted(files), methods=("attn", "vitnt")).numpy()
    from vitfiqa.demo import RECOGNIZER
    assert_batch_close(pd.read_csv(out)["vitnt"].to_numpy(), want["vitnt"], torch.jit.load(RECOGNIZER), "vitnt")
    assert vitfiqa.load().input_contract["source"]["image_size"] == "model record"
