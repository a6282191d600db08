"""Bad input gets a clear Python exception, never a crash or a silent NaN."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import vitfiqa


def save(module, path, how="script", example=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.script(module) if how == "script" else torch.jit.trace(module, example)
    ts.save(str(path))
    return path


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class MLPOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)[:, :12])


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        vitfiqa.load(tmp_path / "nope.pt")


def test_corrupt_model_file(tmp_path):
    p = tmp_path / "corrupt.pt"
    p.write_bytes(b"this is not a torchscript archive" * 10)
    with pytest.raises(ValueError, match="could not load a TorchScript model"):
        vitfiqa.load(p)
    with pytest.raises(ValueError, match="could not load a TorchScript model from bytes"):
        vitfiqa.load(b"garbage")
    with pytest.raises(ValueError, match="empty"):
        vitfiqa.load(b"")


def test_truncated_model_file(tmp_path, model_cases):
    data = open(model_cases["timm-script"].path, "rb").read()
    p = tmp_path / "truncated.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not load"):
        vitfiqa.load(p)


def test_cnn_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no attention found.*CNN"):
        vitfiqa.load(save(SmallCNN(), tmp_path / "cnn.pt"))


def test_model_without_attention(tmp_path):
    with pytest.raises(ValueError, match="no attention found"):
        vitfiqa.load(save(MLPOnly(), tmp_path / "mlp.pt"))


def test_non_tensor_quality_output(tmp_path, loaded):
    m = loaded("insightface-script")  # returns one embedding tensor, no quality head
    with pytest.raises(ValueError, match="quality output has 32 values"):
        m.score(torch.randn(1, 3, 112, 112), methods=["vitfiqa"])


@pytest.mark.parametrize("bad, exc, msg", [
    (torch.randn(2, 1, 112, 112), ValueError, "3 .*channels"),
    (torch.randn(2, 3, 112), ValueError, "3 \\(RGB\\) channels"),
    (torch.randn(2, 2, 3, 112, 112), ValueError, "must be"),
    (torch.randint(0, 5, (2, 3, 112, 112), dtype=torch.int32), TypeError, "floating point"),
    (torch.full((1, 3, 112, 112), float("nan")), ValueError, "NaN"),
    (torch.randn(0, 3, 112, 112), ValueError, "empty"),
    (torch.randn(2, 3, 96, 96), ValueError, "forward failed on input of shape"),
    (np.zeros((112, 112, 3), dtype=np.float64), TypeError, "uint8"),
    ("/no/such/image.png", FileNotFoundError, "image file not found"),
    ([], ValueError, "no images"),
])
def test_bad_images(bad, exc, msg, loaded):
    m = loaded("insightface-script")
    with pytest.raises(exc, match=msg):
        m.score(bad, methods=["attn"])


def test_unreadable_image_file(tmp_path, loaded):
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image"):
        loaded("insightface-script").score([str(p)], methods=["attn"])


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(methods=["nope"]), ValueError, "unknown method"),
    (dict(methods=[]), ValueError, "no method"),
    (dict(methods=["attn"], attn_block=7), IndexError, "out of range"),
    (dict(methods=["vitnt"], vitnt_blocks=[1]), ValueError, "at least two"),
    (dict(methods=["vitnt"], vitnt_weighting="x"), ValueError, "uniform"),
    (dict(methods=["vitnt"], vitnt_scale=-1.0), ValueError, "positive"),
    (dict(methods=["attn"], batch_size=0), ValueError, "positive"),
    (dict(methods=["exfiqa"], exit_normalization="x"), ValueError, "normalisation"),
])
def test_bad_options(kwargs, exc, msg, loaded):
    with pytest.raises(exc, match=msg):
        loaded("vitfiqa_token-script").score(torch.randn(2, 3, 112, 112), **kwargs)


def test_bad_device_and_dtype(model_cases):
    p = model_cases["timm-script"].path
    with pytest.raises(ValueError, match="dtype"):
        vitfiqa.load(p, dtype="int8")
    with pytest.raises((RuntimeError, ValueError)):
        vitfiqa.load(p, device="cuda:0" if not torch.cuda.is_available() else "nonsense")


def test_nan_activations_are_reported(tmp_path, model_cases):
    c = model_cases["insightface-script"]
    import copy

    broken = copy.deepcopy(c.eager)
    with torch.no_grad():
        broken.blocks[0].mlp.fc2.bias.fill_(float("nan"))
    m = vitfiqa.load(save(broken, tmp_path / "nan.pt"))
    with pytest.raises(ValueError, match="not finite"):
        m.score(c.images(1), methods=["vitnt"])
