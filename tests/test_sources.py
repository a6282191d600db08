"""Every route of vitfiqa.load (vitfiqa.sources) gives the scores of the TorchScript route on the same model: tiny
Hugging Face ViT / DINOv2 / CLIP / BEiT built from configs with random weights, a timm-layout ViT, an eager
nn.Module, a ScriptModule object, a preset with a random "official checkpoint"; and everything else is refused
with one line naming the route that works."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import vitfiqa
import vitfiqa.sources
from vitfiqa.models import FaceViT, export_torchscript, load_official_state_dict, preset
from vitfiqa.recognizer import Recognizer, load_recognizer

from .models.cases import spread
from .models.timm_style import TimmStyleViT

RTOL = 1e-5
METHODS = ["attn", "vitnt"]


def images(size: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def torchscript_bytes(module: nn.Module, how: str, example: torch.Tensor, contract: dict | None = None) -> bytes:
    """The TorchScript route, as a user takes it: script or trace, save, load the bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.script(module) if how == "script" else torch.jit.trace(module, example)
    buf = io.BytesIO()
    torch.jit.save(ts, buf)
    return buf.getvalue()


def assert_same_scores(route: vitfiqa.QualityModel, reference: vitfiqa.QualityModel, x: torch.Tensor,
                       methods=METHODS) -> float:
    a = route.score(x, methods=methods, preprocess=False).scores
    b = reference.score(x, methods=methods, preprocess=False).scores
    worst = 0.0
    for k in b:
        err = ((a[k] - b[k]).abs() / b[k].abs()).max().item()
        assert err <= RTOL, (k, a[k], b[k])
        worst = max(worst, err)
    return worst


# -- Hugging Face transformers ------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")

HF_TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32,
               patch_size=8)
HF = {
    # name: (config class, model class, extra config, the final_norm the TorchScript route needs)
    "ViT": ("ViTConfig", "ViTModel", {}, None),
    "DINOv2": ("Dinov2Config", "Dinov2Model", dict(mlp_ratio=2), None),
    "CLIP vision": ("CLIPVisionConfig", "CLIPVisionModel", {}, "m.post_layernorm"),
    "BEiT mean pooling": ("BeitConfig", "BeitModel", dict(use_mean_pooling=True, use_relative_position_bias=True),
                          "m.pooler.layernorm"),
}


def hf_model(name: str) -> nn.Module:
    config_cls, model_cls, extra, _ = HF[name]
    config = getattr(transformers, config_cls)(**HF_TINY, **extra)
    torch.manual_seed(0)
    return spread(getattr(transformers, model_cls)(config))


class UserExport(nn.Module):
    """What a user traces by hand: pixels in, the pooled output (else the tokens) out."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(pixel_values=x)
        return out.pooler_output if out.pooler_output is not None else out.last_hidden_state


@pytest.mark.parametrize("name", list(HF))
def test_transformers_model_equals_torchscript_route(name):
    model = hf_model(name)
    x = images(32)
    m = vitfiqa.load(model)  # image size from the config, the post-pooling norm found by name
    assert m.route == "transformers" and m.image_size == (32, 32)
    assert m.input_contract["source"]["image_size"] == "model record"
    final_norm = HF[name][3]
    if final_norm:
        assert m.final_norm == final_norm.replace("m.", "model.", 1)
    ref = vitfiqa.load(torchscript_bytes(UserExport(model), "trace", x), dict(image_size=32, final_norm=final_norm))
    assert_same_scores(m, ref, x)
    assert model.training is False  # left as it was


def test_transformers_dict_outputs_and_full_clip():
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=dict(**HF_TINY), text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                         intermediate_size=64)))
    clip = spread(clip)
    m = vitfiqa.load(clip)  # the vision tower of a full CLIP model
    assert m.image_size == (32, 32) and m.final_norm == "model.post_layernorm"
    # return_dict=False gives tuples; the wrapper takes the pooled output all the same
    vit = hf_model("ViT")
    vit.config.return_dict = False
    x = images(32)
    ref = vitfiqa.load(torchscript_bytes(UserExport(hf_model("ViT")), "trace", x), dict(image_size=32))
    assert_same_scores(vitfiqa.load(vit), ref, x)


def test_clip_vitnt_error_names_post_layernorm():
    model = hf_model("CLIP vision")
    x = images(32)
    m = vitfiqa.load(torchscript_bytes(UserExport(model), "trace", x), dict(image_size=32))
    assert "m.post_layernorm" in m.info["final_norm_candidates"]
    with pytest.raises(ValueError, match=r"final_norm='m\.post_layernorm'"):
        m.score(x, methods=["vitnt"], preprocess=False)
    assert not any("final_norm='norm'" in n for n in m.info["notes"])


# -- timm layout, eager modules, ScriptModule objects ----------------------------------------------------------

class PooledTimmViT(TimmStyleViT):
    """timm's global_pool='avg' layout: norm is an Identity, fc_norm applied after mean pooling."""

    def __init__(self, **kw):
        super().__init__(**kw)
        dim = self.pos_embed.shape[-1]
        self.norm = nn.Identity()
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, attn_mask: torch.Tensor | None = None):
        x = self.forward_features(x, attn_mask)
        return self.head(self.fc_norm(x[:, self.num_prefix:].mean(1)))


@pytest.mark.parametrize("cls, final_norm", [(TimmStyleViT, None), (PooledTimmViT, "fc_norm")])
def test_timm_layout_equals_torchscript_route(cls, final_norm):
    torch.manual_seed(0)
    model = spread(cls(img_size=48, patch_size=8, dim=48, depth=3, num_heads=3))
    model.pretrained_cfg = {"input_size": (3, 48, 48), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    m = vitfiqa.load(model)
    assert m.route == "timm" and m.image_size == (48, 48) and m.final_norm == final_norm
    assert m.normalization == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    x = images(48)
    ref = vitfiqa.load(torchscript_bytes(model, "script", x), dict(image_size=48, final_norm=final_norm))
    assert_same_scores(m, ref, x)


def small_face_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return spread(FaceViT(embed_dim=48, depth=3, num_heads=4, num_features=32), seed=seed)


def test_eager_module_and_scriptmodule_equal_torchscript_file(tmp_path):
    model = small_face_vit()
    path = export_torchscript(model, str(tmp_path / "m.pt"))
    ref = vitfiqa.load(path)
    x = images(112)
    eager = vitfiqa.load(model)
    assert eager.route == "nn.Module" and eager.image_size == (112, 112)
    assert_same_scores(eager, ref, x)
    scripted = vitfiqa.load(torch.jit.script(model))
    assert scripted.route == "ScriptModule"
    assert_same_scores(scripted, ref, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
    assert_same_scores(vitfiqa.load(traced), ref, x)
    # The identity recorded in results tables is the weights', whatever the export's bytes
    assert vitfiqa.load(model).sha256 == eager.sha256 != vitfiqa.load(small_face_vit(1)).sha256
    # model options go into the export's record
    assert vitfiqa.load(model, dict(channel_order="bgr")).input_contract["source"]["channel_order"] == "argument"


def test_eager_module_that_only_traces(tmp_path):
    class Untyped(nn.Module):  # scripting fails on the untyped **kwargs; tracing works
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, **kwargs):
            return self.inner(x)

    inner = small_face_vit()
    m = vitfiqa.load(Untyped(inner), dict(image_size=112))
    assert_same_scores(m, vitfiqa.load(export_torchscript(inner, str(tmp_path / "m.pt"))), images(112))


# -- presets with an official checkpoint --------------------------------------------------------------------------

def random_checkpoint(name: str, path) -> nn.Module:
    """The preset with random weights (filled directly: the init alone takes seconds), saved as its "official
    checkpoint"."""
    with torch.device("meta"):
        model = preset(name)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in k else
                        torch.randn(t.shape, generator=g) * (0.1 if t.dim() > 1 else 0.3))
            else:
                t.zero_()
    torch.save(model.state_dict(), path)
    return model.eval()


def test_preset_with_checkpoint_equals_torchscript_route(tmp_path):
    ckpt = tmp_path / "model.pt"
    model = random_checkpoint("insightface_vit_t", ckpt)
    m = vitfiqa.load("insightface_vit_t", checkpoint=str(ckpt))
    assert m.route == "preset" and m.image_size == (112, 112)
    ref = vitfiqa.load(export_torchscript(model, str(tmp_path / "ref.pt")))
    assert_same_scores(m, ref, images(112, n=2))
    # the loaded state dict gives the same weights: the same model identity
    state = torch.load(ckpt, weights_only=True)
    assert vitfiqa.sources.resolve("insightface_vit_t", checkpoint=state).sha256 == m.sha256


def test_recognizer_preset_route(tmp_path):
    ckpt = tmp_path / "model.pt"
    model = random_checkpoint("insightface_vit_t", ckpt)
    u8 = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    ref = Recognizer(export_torchscript(model, str(tmp_path / "ref.pt")), flip="none").embed(u8)
    by_preset = load_recognizer("insightface_vit_t", checkpoint=str(ckpt), flip="none")
    assert by_preset.name == "insightface_vit_t"
    np.testing.assert_allclose(by_preset.embed(u8), ref, rtol=RTOL, atol=1e-6)
    small = small_face_vit()
    np.testing.assert_array_equal(Recognizer(small, flip="none").embed(u8),
                                  Recognizer(export_torchscript(small, str(tmp_path / "s.pt")), flip="none").embed(u8))


def test_cnn_recognizer_preset_carries_its_input(tmp_path, monkeypatch):
    from vitfiqa import fr_models

    # a shallow iResNet in the place of a published one (the route is the same for every entry)
    monkeypatch.setitem(fr_models.RECOGNIZERS, "arcface_r50", fr_models.RecognizerPreset(
        lambda: fr_models.IResNet(layers=(1, 1, 1, 1)), "insightface"))
    torch.manual_seed(0)
    cnn = fr_models.build_recognizer("arcface_r50")
    torch.save(cnn.state_dict(), tmp_path / "backbone.pth")
    r = load_recognizer("arcface_r50", checkpoint=str(tmp_path / "backbone.pth"), flip="none")
    pre = fr_models.RECOGNIZERS["arcface_r50"]
    assert (r.channel_order, r.mean, r.std, r.image_size) == (pre.channel_order, (pre.mean,) * 3, (pre.std,) * 3,
                                                              (112, 112))
    fr_models.export_recognizer("arcface_r50", str(tmp_path / "backbone.pth"), str(tmp_path / "ref.pt"))
    u8 = np.random.default_rng(0).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(r.embed(u8), Recognizer(str(tmp_path / "ref.pt"), flip="none").embed(u8))
    with pytest.raises(ValueError, match="presets"):  # a CNN is no quality model
        vitfiqa.load("arcface_r50", checkpoint=str(tmp_path / "backbone.pth"))


# -- what is refused, in one line naming the route that works ---------------------------------------------------------

def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text.strip(), text
    return text


def test_refusals_name_the_route_that_works(tmp_path):
    ckpt = tmp_path / "model.pt"
    random_checkpoint("insightface_vit_t", ckpt)
    with pytest.raises(ValueError) as e:
        vitfiqa.load(str(ckpt))
    msg = one_line(e)
    assert "model.pt is a state dict" in msg and "vitfiqa.load('<preset>', checkpoint='model.pt')" in msg
    assert "cvlface_vit_b" in msg and "export_torchscript" in msg
    with pytest.raises(ValueError, match="state dict"):
        vitfiqa.load(ckpt.read_bytes())
    with pytest.raises(ValueError, match="state dict is weights without the model"):
        vitfiqa.load(torch.load(ckpt, weights_only=True))
    with pytest.raises(ValueError, match="is a folder") as e:
        vitfiqa.load(str(tmp_path))
    one_line(e)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="Hugging Face model folder"):
        vitfiqa.load(str(hf))
    with pytest.raises(ValueError, match="goes with a preset name.*presets are"):
        vitfiqa.load(str(ckpt), checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="'vit_huge' is none"):
        vitfiqa.load("vit_huge", checkpoint=str(ckpt))
    with pytest.raises(ValueError, match=r"needs its official checkpoint: vitfiqa.load\('cvlface_vit_b'"):
        vitfiqa.load("cvlface_vit_b")
    with pytest.raises(FileNotFoundError, match="is no preset"):
        vitfiqa.load("cvlface_vit_q")
    with pytest.raises(ValueError, match="checkpoint does not match"):
        vitfiqa.load("cvlface_vit_s", checkpoint=str(ckpt))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        vitfiqa.load("cvlface_vit_s", checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(TypeError, match="cannot load a int"):
        vitfiqa.load(3)
    with pytest.raises(ValueError, match="goes with a preset name"):
        vitfiqa.load(small_face_vit(), checkpoint=str(ckpt))


# -- reproduce configs, the CLI and Ray take the same routes ----------------------------------------------------------

@pytest.fixture
def tiny_preset(monkeypatch, tmp_path):
    """A small preset in PRESETS (the route is the same for every entry), its random checkpoint and the same
    weights exported as TorchScript."""
    from vitfiqa import models

    monkeypatch.setitem(models.PRESETS, "tiny_face_vit", models.Preset(
        "tiny_face_vit", None, dict(patch_size=9, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0,
                                    num_features=32), "tests", "tests"))
    model = random_checkpoint("tiny_face_vit", tmp_path / "tiny.pt")
    export_torchscript(model, str(tmp_path / "tiny_ts.pt"))
    return tmp_path / "tiny.pt", tmp_path / "tiny_ts.pt"


def test_reproduce_config_preset_and_checkpoint(tmp_path, tiny_preset):
    from vitfiqa.eval import synthetic
    from vitfiqa.eval.reproduction import load_config, reproduce

    ckpt, ts = tiny_preset
    synthetic.write_bin(tmp_path / "lfw.bin", n_pairs=12, n_subjects=4)

    def cfg(out, **model):
        return {"out": str(tmp_path / out), "fmrs": [0.1], "batch_size": 8,
                "benchmarks": [{"name": "LFW", "type": "bin", "path": "lfw.bin"}],
                "recognizers": [{"name": "R", **model}], "qualities": [{"name": "ATTN", "method": "attn", **model}]}

    by_preset = reproduce(cfg("a", preset="tiny_face_vit", checkpoint="tiny.pt"), base=tmp_path, progress=False)
    by_file = reproduce(cfg("b", model=str(ts)), base=tmp_path, progress=False)
    assert by_preset.frame.pauc.tolist() == by_file.frame.pauc.tolist()
    assert len(list((tmp_path / "a" / "cache" / "models").glob("tiny_face_vit-*.pt"))) == 1
    with pytest.raises(ValueError, match="unknown preset 'vit_q'"):
        load_config(cfg("c", preset="vit_q", checkpoint="tiny.pt"), base=tmp_path)
    with pytest.raises(ValueError, match="preset and checkpoint together"):
        load_config(cfg("c", preset="tiny_face_vit"), base=tmp_path)


def test_cli_preset_and_checkpoint_equal_model_file(tmp_path, tiny_preset):
    from PIL import Image

    from vitfiqa.cli import main

    ckpt, ts = tiny_preset
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["-q", "score", "--preset", "tiny_face_vit", "--checkpoint", str(ckpt), "--images", str(folder),
                 "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["-q", "score", "--model", str(ts), "--images", str(folder), "--out", str(tmp_path / "b.csv")]) == 0
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(a[["attn", "vitnt"]].to_numpy(), b[["attn", "vitnt"]].to_numpy(), rtol=RTOL)
    # a state dict given as --model: one line naming the route that works
    assert main(["-q", "score", "--model", str(ckpt), "--images", str(folder), "--out", str(tmp_path / "c.csv")]) == 2
    assert not (tmp_path / "c.csv.table").exists()


def test_ray_takes_an_eager_module(tmp_path):
    ray = pytest.importorskip("ray")
    from PIL import Image

    from vitfiqa.distributed import score_with_ray
    from vitfiqa.pipeline import score_frame

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(paths[-1])
    model = small_face_vit()
    local = score_frame(vitfiqa.load(export_torchscript(model, str(tmp_path / "m.pt"))), paths, METHODS)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        dist = score_with_ray(model, paths, tmp_path / "t", METHODS, num_actors=1, progress=False)
    finally:
        if started:
            ray.shutdown()
    for k in METHODS:
        np.testing.assert_allclose(dist[k].to_numpy(), local[k].to_numpy(), rtol=RTOL)
