"""CNN recognizers of the papers: official checkpoint layouts (written out here from the public repositories'
model definitions), strict loading, TorchScript export and embeddings through the C++ core."""
import numpy as np
import pytest
import torch

from vitfiqa.fr_models import (RECOGNIZERS, IRBackbone, IResNet, build_recognizer, ir_backbone, iresnet,
                               recognizer_state_dict, strict_load)
from vitfiqa.models import export_torchscript
from vitfiqa.recognizer import Recognizer

from .models.cases import export, spread


def small_iresnet(eps=1e-5):
    return IResNet((1, 2, 1, 1), eps=eps)  # the insightface graph with fewer blocks: fast on CPU


def small_ir():
    return IRBackbone((1, 2, 1, 1))


def randomize(model, seed=0):
    spread(model, std=0.05, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def r100_keys():
    return {k: tuple(v.shape) for k, v in iresnet(100).state_dict().items()}


def test_insightface_iresnet100_layout(r100_keys):
    # arcface_torch iresnet100: stem, layers of 3/13/30/3 blocks, downsample in each stage's first block,
    # bn2 -> fc (25088 -> 512) -> features (BatchNorm1d), BatchNorm eps 1e-5
    expect = {"conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "prelu.weight": (64,),
              "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.0.prelu.weight": (64,),
              "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer1.0.downsample.1.running_mean": (64,),
              "layer2.12.conv2.weight": (128, 128, 3, 3), "layer3.29.bn3.bias": (256,),
              "layer4.2.conv2.weight": (512, 512, 3, 3), "bn2.weight": (512,), "fc.weight": (512, 25088),
              "fc.bias": (512,), "features.weight": (512,), "features.running_var": (512,)}
    for k, shape in expect.items():
        assert r100_keys[k] == shape, k
    assert "layer2.13.conv1.weight" not in r100_keys and "layer1.1.downsample.0.weight" not in r100_keys
    m = build_recognizer("arcface_r100")
    assert m.bn1.eps == 1e-5 and build_recognizer("magface_r100").features.eps == 2e-5


def test_curricularface_ir101_layout():
    keys = {k: tuple(v.shape) for k, v in ir_backbone(101).state_dict().items()}
    expect = {"input_layer.0.weight": (64, 3, 3, 3), "input_layer.1.running_mean": (64,),
              "input_layer.2.weight": (64,), "body.0.res_layer.0.weight": (64,),
              "body.0.res_layer.1.weight": (64, 64, 3, 3), "body.0.res_layer.2.weight": (64,),
              "body.0.res_layer.3.weight": (64, 64, 3, 3), "body.0.res_layer.4.running_var": (64,),
              "body.3.shortcut_layer.0.weight": (128, 64, 1, 1), "body.3.shortcut_layer.1.weight": (128,),
              "body.48.res_layer.3.weight": (512, 512, 3, 3), "output_layer.0.weight": (512,),
              "output_layer.3.weight": (512, 25088), "output_layer.4.running_mean": (512,)}
    for k, shape in expect.items():
        assert keys[k] == shape, k
    # MaxPool shortcuts have no weights; the final BatchNorm1d has no affine parameters
    assert "body.0.shortcut_layer.0.weight" not in keys and "output_layer.4.weight" not in keys
    assert "body.49.res_layer.0.weight" not in keys


def test_magface_checkpoint_round_trip(tmp_path):
    """MagFace's {epoch, arch, state_dict, optimizer} with module.features.<key> and the classifier
    module.fc.weight [512, classes]: the classifier must not land in the backbone's fc."""
    src = randomize(small_iresnet(eps=2e-5))
    sd = {f"module.features.{k}": v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(512, 7)
    ckpt = {"epoch": 3, "arch": "iresnet18", "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}
    torch.save(ckpt, tmp_path / "magface_epoch_00003.pth")
    dst = small_iresnet(eps=2e-5)
    strict_load(dst, recognizer_state_dict(str(tmp_path / "magface_epoch_00003.pth"), "magface"))
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(dst.eval()(x), src(x), rtol=0, atol=0)
    bad = dict(ckpt, state_dict={**sd, "module.margin.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys in the MagFace checkpoint"):
        recognizer_state_dict(bad, "magface")
    with pytest.raises(ValueError, match="training checkpoint dict"):
        recognizer_state_dict(ckpt, "insightface")


@pytest.mark.parametrize("make, layout", [(small_iresnet, "insightface"), (small_ir, "curricularface")])
def test_plain_checkpoints_round_trip_and_strict_keys(tmp_path, make, layout):
    src = randomize(make(), seed=1)
    torch.save(src.state_dict(), tmp_path / "backbone.pth")
    dst = strict_load(make(), recognizer_state_dict(str(tmp_path / "backbone.pth"), layout)).eval()
    x = torch.randn(2, 3, 112, 112)
    out_src, out_dst = src(x), dst(x)
    torch.testing.assert_close(out_dst, out_src, rtol=0, atol=0)
    sd = src.state_dict()
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    with pytest.raises(ValueError, match="missing .*unexpected .*module"):
        strict_load(make(), prefixed)
    wrong = dict(sd)
    key = next(k for k in sd if k.endswith("running_mean"))
    wrong[key] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape mismatch"):
        strict_load(make(), wrong)


def test_recognizer_runs_cnns_through_the_core(tmp_path):
    """TorchScript CNNs (iResNet; IR with a tuple output) as recognizers: embeddings equal the eager model
    on BGR input scaled as configured; flip concatenation halves are the normalised original and flip."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    ir = randomize(small_ir(), seed=2)
    path = export(ir, "script", torch.randn(2, 3, 112, 112), str(tmp_path / "ir50.pt"))
    rec = Recognizer(path, channel_order="bgr", flip="concat", output=0)
    bgr = torch.from_numpy(imgs[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    ref = ir((bgr / 255 - 0.5) / 0.5)[0].detach().numpy()
    ref_flip = ir((bgr.flip(3) / 255 - 0.5) / 0.5)[0].detach().numpy()
    e = rec.embed(imgs)
    assert e.shape == (2, 1024)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(e[:, :512], unit(ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e[:, 512:], unit(ref_flip), rtol=1e-4, atol=1e-5)
    mag = randomize(small_iresnet(eps=2e-5), seed=3)
    # the preset's preprocessing travels in the TorchScript file's input contract (as export_recognizer writes it)
    pre = RECOGNIZERS["magface_r100"]
    path = export_torchscript(mag, str(tmp_path / "mag.pt"), "trace", torch.randn(2, 3, 112, 112), input_contract={
        "image_size": [112, 112], "channel_order": pre.channel_order,
        "normalization": {"mean": [pre.mean] * 3, "std": [pre.std] * 3}})
    rec = Recognizer(path, flip="none")
    # RGB: what the official pipeline feeds from the release files (see test_channel_order.py)
    assert rec.channel_order == "rgb" and rec.mean == (0.0, 0.0, 0.0) and rec.std == (1.0, 1.0, 1.0)
    rgb = torch.from_numpy(imgs.copy()).permute(0, 3, 1, 2).float()
    np.testing.assert_allclose(unit(rec.embed(imgs)), unit(mag(rgb / 255).detach().numpy()), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="outputs"):
        Recognizer(str(tmp_path / "ir50.pt"), output=5).embed(imgs)
