"""The CNN face recognizers the FIQA papers compare with, built to load their official checkpoints strictly.

- insightface iResNet-50/100 (``arcface_torch``; ArcFace and ElasticFace): stem conv-BN-PReLU, four stages of
  pre-activation basic blocks (BN, conv3x3, BN, PReLU, conv3x3 stride, BN; 1x1 conv + BN shortcut where the
  shape changes), then BN2d, dropout, ``fc`` (512*7*7 -> 512) and a BatchNorm1d named ``features``. BatchNorm
  eps 1e-5. Checkpoints are ``backbone.module.state_dict()``: plain keys, no prefix.
- MagFace iResNet-100: the same graph with BatchNorm eps 2e-5. Its checkpoint is a dict ``{epoch, arch,
  state_dict, optimizer}`` whose ``state_dict`` holds the backbone as ``module.features.<key>`` and the
  MagLinear classifier as ``module.fc.weight`` ([512, classes]); that classifier is not the backbone's own
  ``fc`` (``module.features.fc.*``) and is dropped. The CR-FIQA evaluation feeds MagFace x/255 only.
- CurricularFace IR-101: a different network (``input_layer``; ``body`` of bottleneck_IR units with MaxPool or
  conv shortcuts; ``output_layer`` BN2d, dropout, flatten, Linear, BatchNorm1d without affine); ``forward``
  returns ``(embedding, conv_out)``. Checkpoint ``CurricularFace_Backbone.pth``: a plain state dict.

:data:`RECOGNIZERS` records each one's input as the official pipeline effectively feeds it from the public
release files: **RGB**, scaled ``(x/255 - 0.5)/0.5`` (MagFace: x/255). The CR-FIQA scripts read their prepared
images with OpenCV and pass ``--color_channel BGR`` (no conversion), but those prepared files were written
channel-swapped by its ``feature_extraction/extract_*.py`` (``extract_bin.py`` decodes RGB with MXNet and
writes with ``cv2.imwrite``; ``extract_xqlfw.py``, ``extract_IJB.py`` and ``extract_adience.py`` apply
``COLOR_RGB2BGR`` to images read as BGR before writing), so the networks see the original RGB. Point a
benchmark at those prepared folders with ``prepared="crfiqa"`` (:data:`vitfiqa.eval.PREPARED`), which swaps
them back on read, and keep these presets.
``export_recognizer`` builds one, loads a checkpoint and writes the TorchScript file for
:class:`vitfiqa.recognizer.Recognizer` / ``vitfiqa reproduce``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

# The input these recognizers are built for: after four stride-2 stages their ``fc`` reads a 512 x 7 x 7 map,
# so 112 x 112 is a fact of the architecture (not the package's default image size, which could change).
INPUT_SIZE = (112, 112)

IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
IR_UNITS = {50: (3, 4, 14, 3), 101: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation basic block of insightface's iResNet."""

    def __init__(self, cin: int, cout: int, stride: int, eps: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=eps)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=eps)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=eps))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """insightface iResNet (ArcFace, ElasticFace; MagFace with ``eps=2e-5``) for 112x112 input:
    ``forward`` returns the 512-d embedding (the ``features`` BatchNorm1d output)."""

    def __init__(self, layers=(3, 13, 30, 3), num_features: int = 512, eps: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=eps)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = [IBasicBlock(cin, width, 2, eps)] + [IBasicBlock(width, width, 1, eps) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=eps)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class BottleneckIR(nn.Module):
    """CurricularFace's bottleneck_IR unit: BN, conv3x3, PReLU, conv3x3 (stride), BN; shortcut MaxPool(1,
    stride) when the width is kept, else 1x1 conv + BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), _conv3x3(cin, cout), nn.PReLU(cout),
                                       _conv3x3(cout, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """CurricularFace IR-50/101/152 for 112x112 input; ``forward`` returns ``(embedding, conv_out)`` as the
    official model does (``conv_out``: the flattened body output)."""

    def __init__(self, units=(3, 13, 30, 3), num_features: int = 512):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        body = []
        cin = 64
        for width, n in zip((64, 128, 256, 512), units):
            body += [BottleneckIR(cin, width, 2)] + [BottleneckIR(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, num_features),
                                          nn.BatchNorm1d(num_features, affine=False))

    def forward(self, x):
        x = self.body(self.input_layer(x))
        conv_out = x.reshape(x.shape[0], -1)
        return self.output_layer(x), conv_out


def iresnet(depth: int = 100, eps: float = 1e-5, **kwargs) -> IResNet:
    """insightface iResNet-18/34/50/100 (``eps=2e-5`` for MagFace)."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"iResNet depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
    return IResNet(IRESNET_LAYERS[depth], eps=eps, **kwargs)


def ir_backbone(depth: int = 101, **kwargs) -> IRBackbone:
    """CurricularFace IR-50/101/152."""
    if depth not in IR_UNITS:
        raise ValueError(f"IR depth must be one of {sorted(IR_UNITS)}, got {depth}")
    return IRBackbone(IR_UNITS[depth], **kwargs)


# -- official checkpoint layouts -----------------------------------------------------------------------------

LAYOUTS = ("insightface", "magface", "curricularface")


def strict_load(model: nn.Module, state: dict, source: str = "checkpoint") -> nn.Module:
    """Load ``state`` into ``model`` only if keys and shapes match exactly; otherwise one clear error listing
    missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state)
                   if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        def show(keys):
            return f"{keys[:8]}{' ... (%d in all)' % len(keys) if len(keys) > 8 else ''}"
        raise ValueError(f"{source} does not match the model: missing {show(missing)}, unexpected "
                         f"{show(unexpected)}, shape mismatch {show(shape)}")
    model.load_state_dict(state)
    return model


def _read(checkpoint) -> dict:
    if isinstance(checkpoint, dict):
        return checkpoint
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary pickles; torch raises several types
        raise ValueError(f"cannot read checkpoint {checkpoint} as weights (torch.load weights_only): "
                         f"{str(exc).splitlines()[0]}") from None


def recognizer_state_dict(checkpoint, layout: str) -> dict:
    """The backbone's state dict from an official checkpoint (path or loaded dict) of ``layout``:

    ``insightface`` / ``curricularface``: the file is the plain state dict.
    ``magface``: ``{..., "state_dict": {"module.features.<key>": ..., "module.fc.weight": classifier}}``; the
    backbone keys lose ``module.features.``, the classifier is dropped; any other key is refused."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    raw = _read(checkpoint)
    if layout != "magface":
        if "state_dict" in raw and isinstance(raw["state_dict"], dict):
            raise ValueError(f"this is a training checkpoint dict (keys {sorted(raw)[:6]}), not a plain {layout} "
                             "state dict; for MagFace use layout='magface'")
        return dict(raw)
    sd = raw.get("state_dict") if isinstance(raw.get("state_dict"), dict) else None
    if sd is None:
        raise ValueError("a MagFace checkpoint is a dict with 'state_dict' (and epoch, arch, optimizer); "
                         f"got keys {sorted(raw)[:6]}")
    out, other = {}, []
    for k, v in sd.items():
        if k.startswith("module.features."):
            out[k[len("module.features."):]] = v
        elif k != "module.fc.weight":  # the MagLinear classifier head, not part of the recognizer
            other.append(k)
    if other:
        raise ValueError(f"unexpected keys in the MagFace checkpoint: {other[:8]}")
    return out


@dataclass(frozen=True)
class RecognizerPreset:
    """A published recognizer: how to build it, its checkpoint layout and its input."""

    build: Callable[[], nn.Module]
    layout: str
    channel_order: str = "rgb"   # what the official pipeline feeds from the release files (module docstring)
    mean: float = 0.5
    std: float = 0.5
    output: int = 0              # which forward output is the embedding

    def preprocessing(self) -> dict:
        """Options for :class:`vitfiqa.recognizer.Recognizer` / a reproduce config's [[recognizers]]."""
        return dict(channel_order=self.channel_order, mean=self.mean, std=self.std, output=self.output)


RECOGNIZERS: dict[str, RecognizerPreset] = {
    "arcface_r50": RecognizerPreset(lambda: iresnet(50), "insightface"),
    "arcface_r100": RecognizerPreset(lambda: iresnet(100), "insightface"),
    "elasticface_r100": RecognizerPreset(lambda: iresnet(100), "insightface"),
    "magface_r100": RecognizerPreset(lambda: iresnet(100, eps=2e-5), "magface", mean=0.0, std=1.0),
    "curricularface_ir101": RecognizerPreset(lambda: ir_backbone(101), "curricularface"),
}


def build_recognizer(name: str, checkpoint=None) -> nn.Module:
    """A published recognizer (see :data:`RECOGNIZERS`) in eval mode, with an official checkpoint (path or
    loaded dict) loaded strictly when given."""
    if name not in RECOGNIZERS:
        raise ValueError(f"unknown recognizer {name!r}; choose from {sorted(RECOGNIZERS)}")
    preset = RECOGNIZERS[name]
    model = preset.build()
    if checkpoint is not None:
        strict_load(model, recognizer_state_dict(checkpoint, preset.layout), f"{name} checkpoint")
    return model.eval()


def export_recognizer(name: str, checkpoint, path: str) -> dict:
    """Build ``name``, load its official ``checkpoint`` and save it as TorchScript at ``path`` with its input
    contract (112x112, channel order, normalisation), which :class:`vitfiqa.recognizer.Recognizer` reads;
    returns the preprocessing options (channel order, mean, std, output)."""
    from .contract import export_torchscript

    model = build_recognizer(name, checkpoint)
    preset = RECOGNIZERS[name]
    export_torchscript(model, path, input_contract=dict(
        image_size=list(INPUT_SIZE), channel_order=preset.channel_order,
        normalization={"mean": [preset.mean] * 3, "std": [preset.std] * 3}))
    return preset.preprocessing()
