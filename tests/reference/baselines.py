"""Independent references for the baselines (vitfiqa.baselines): functional forwards that read a state dict in
the OFFICIAL key layout (written from the official repositories' model files: fdbtrs/CR-FIQA, IrvingMeng/MagFace,
jankolf/GraFIQs, Tencent/TFace quality/, LSIbabnikz/eDifFIQA), and each method re-derived on them by another
code path: SER-FIQ as T whole forward passes with explicit pairwise distances, GraFIQs one image at a time with
BatchNorm statistics collected by the forward itself and F.mse_loss, no module hooks.

``*_keys`` give each layout's keys and shapes; ``random_state`` fills them with random weights (in the official
dtype: ``num_batches_tracked`` int64), and every forward here checks that it read every key.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


# -- layouts -------------------------------------------------------------------------------------------------------

def _bn_keys(p, c, out):
    out.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
                f"{p}.num_batches_tracked": ()})


def iresnet_keys(layers, qs: bool = False, prefix: str = "") -> dict:
    """insightface / CR-FIQA / MagFace / GraFIQs iResNet (backbones/iresnet.py)."""
    k: dict = {}
    p = prefix
    k[f"{p}conv1.weight"] = (64, 3, 3, 3)
    _bn_keys(f"{p}bn1", 64, k)
    k[f"{p}prelu.weight"] = (64,)
    cin = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), 1):
        for j in range(n):
            b = f"{p}layer{li}.{j}"
            _bn_keys(f"{b}.bn1", cin, k)
            k[f"{b}.conv1.weight"] = (planes, cin, 3, 3)
            _bn_keys(f"{b}.bn2", planes, k)
            k[f"{b}.prelu.weight"] = (planes,)
            k[f"{b}.conv2.weight"] = (planes, planes, 3, 3)
            _bn_keys(f"{b}.bn3", planes, k)
            if j == 0:
                k[f"{b}.downsample.0.weight"] = (planes, cin, 1, 1)
                _bn_keys(f"{b}.downsample.1", planes, k)
            cin = planes
    _bn_keys(f"{p}bn2", 512, k)
    k[f"{p}fc.weight"], k[f"{p}fc.bias"] = (512, 512 * 49), (512,)
    _bn_keys(f"{p}features", 512, k)
    if qs:
        k["qs.weight"], k["qs.bias"] = (1, 512), (1,)
    return k


def sddfiqa_keys(units) -> dict:
    """TFace quality/ R50(use_type="Qua") (generate_pseudo_labels/extract_embedding/model/model.py)."""
    k: dict = {"input_layer.0.weight": (64, 3, 3, 3)}
    _bn_keys("input_layer.1", 64, k)
    k["input_layer.2.weight"] = (64,)
    i, cin = 0, 64
    for depth, n in zip((64, 128, 256, 512), units):
        for j in range(n):
            b = f"body.{i}"
            if cin != depth:
                k[f"{b}.shortcut_layer.0.weight"] = (depth, cin, 1, 1)
                _bn_keys(f"{b}.shortcut_layer.1", depth, k)
            _bn_keys(f"{b}.res_layer.0", cin, k)
            k[f"{b}.res_layer.1.weight"] = (depth, cin, 3, 3)
            k[f"{b}.res_layer.2.weight"] = (depth,)
            k[f"{b}.res_layer.3.weight"] = (depth, depth, 3, 3)
            _bn_keys(f"{b}.res_layer.4", depth, k)
            cin, i = depth, i + 1
    k["quality.1.weight"] = (512 * 49,)
    k["quality.3.weight"], k["quality.3.bias"] = (1, 512 * 49), (1,)
    return k


# MobileFaceNet (eDifFIQA model/mobilenet.py): (name, cin, cout, kernel, stride, groups, kind)
def _mfn_plan():
    plan = [("conv1", "cb", 3, 64, 3, 2, 1), ("conv2_dw", "cb", 64, 64, 3, 1, 64),
            ("conv_23", "dw", 64, 64, 3, 2, 128)]
    plan += [(f"conv_3.model.{i}", "dwr", 64, 64, 3, 1, 128) for i in range(4)]
    plan += [("conv_34", "dw", 64, 128, 3, 2, 256)]
    plan += [(f"conv_4.model.{i}", "dwr", 128, 128, 3, 1, 256) for i in range(6)]
    plan += [("conv_45", "dw", 128, 128, 3, 2, 512)]
    plan += [(f"conv_5.model.{i}", "dwr", 128, 128, 3, 1, 256) for i in range(2)]
    plan += [("conv_6_sep", "cb", 128, 512, 1, 1, 1), ("conv_6_dw", "lb", 512, 512, 7, 1, 512)]
    return plan


def mobilefacenet_keys(prefix: str = "") -> dict:
    k: dict = {}

    def cb(p, cin, cout, kern, groups, prelu=True):
        k[f"{p}.conv.weight"] = (cout, cin // groups, kern, kern)
        _bn_keys(f"{p}.bn", cout, k)
        if prelu:
            k[f"{p}.prelu.weight"] = (cout,)

    for name, kind, cin, cout, kern, stride, g in _mfn_plan():
        p = prefix + name
        if kind == "cb":
            cb(p, cin, cout, kern, g)
        elif kind == "lb":
            cb(p, cin, cout, kern, g, prelu=False)
        else:
            cb(f"{p}.conv", cin, g, 1, 1)
            cb(f"{p}.conv_dw", g, g, kern, g)
            cb(f"{p}.project", g, cout, 1, 1, prelu=False)
    k[f"{prefix}linear.weight"] = (512, 512)
    _bn_keys(f"{prefix}bn", 512, k)
    return k


def ediffiqa_keys(layers=None) -> dict:
    k = mobilefacenet_keys("base_model.") if layers is None else iresnet_keys(layers, prefix="base_model.")
    k.update({"mlp.l1.weight": (1024, 512), "mlp.l1.bias": (1024,), "mlp.l2.weight": (1, 1024), "mlp.l2.bias": (1,)})
    return k


def random_state(keys: dict, seed: int = 0) -> dict:
    """Random weights with sane scales: convs and linears ~ N(0, 1/fan_in), BN affine near (1, 0), running
    statistics near (0, 1), PReLU slopes 0.25 +- noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(100, dtype=torch.int64)
        elif name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            out[name] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[name] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif ".prelu" in name or name.endswith("prelu.weight") or name in ("quality.1.weight",) or \
                name.endswith("input_layer.2.weight") or name.endswith("res_layer.2.weight"):
            out[name] = 0.25 + 0.05 * torch.randn(shape, generator=g)
        elif name.endswith("weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[name] = 0.05 * torch.randn(shape, generator=g)
    return out


# -- functional forwards ----------------------------------------------------------------------------------------

class _Reader:
    """Reads a state dict, remembering which keys were read; BatchNorm2d inputs are recorded when asked."""

    def __init__(self, sd: dict, eps: float, record: Optional[list] = None):
        self.sd, self.eps, self.used, self.record = sd, eps, set(), record

    def __call__(self, key):
        self.used.add(key)
        return self.sd[key]

    def bn(self, p, x):
        for s in ("num_batches_tracked",):
            self.used.add(f"{p}.{s}")
        rm, rv = self(f"{p}.running_mean"), self(f"{p}.running_var")
        if self.record is not None and x.dim() == 4:
            self.record.append((x, rm, rv))
        return F.batch_norm(x, rm, rv, self(f"{p}.weight"), self(f"{p}.bias"), False, 0.0, self.eps)

    def done(self, prefix=""):
        left = {k for k in self.sd if k.startswith(prefix)} - self.used
        assert not left, f"reference did not read {sorted(left)[:5]}"


def iresnet_forward(sd, x, layers, eps=1e-5, *, prefix="", record=None, feature_mask=None, check=True):
    """-> (embedding, qs or None, [block1..block4])."""
    r = _Reader(sd, eps, record)
    p = prefix
    x = F.prelu(r.bn(f"{p}bn1", F.conv2d(x, r(f"{p}conv1.weight"), padding=1)), r(f"{p}prelu.weight"))
    blocks = []
    for li, n in enumerate(layers, 1):
        for j in range(n):
            b = f"{p}layer{li}.{j}"
            stride = 2 if j == 0 else 1
            y = r.bn(f"{b}.bn1", x)
            y = F.conv2d(y, r(f"{b}.conv1.weight"), padding=1)
            y = F.prelu(r.bn(f"{b}.bn2", y), r(f"{b}.prelu.weight"))
            y = r.bn(f"{b}.bn3", F.conv2d(y, r(f"{b}.conv2.weight"), stride=stride, padding=1))
            if j == 0:
                sc = r.bn(f"{b}.downsample.1", F.conv2d(x, r(f"{b}.downsample.0.weight"), stride=stride))
            else:
                sc = x
            x = y + sc
        blocks.append(x)
    f = r.bn(f"{p}bn2", x).flatten(1)
    if feature_mask is not None:
        f = f * feature_mask
    e = F.linear(f, r(f"{p}fc.weight"), r(f"{p}fc.bias"))
    e = F.batch_norm(e, r(f"{p}features.running_mean"), r(f"{p}features.running_var"), r(f"{p}features.weight"),
                     r(f"{p}features.bias"), False, 0.0, eps)
    r.used.add(f"{p}features.num_batches_tracked")
    qs = F.linear(e, r("qs.weight"), r("qs.bias")) if "qs.weight" in sd else None
    if check:
        r.done(prefix)
    return e, qs, blocks


def sddfiqa_forward(sd, x, units):
    r = _Reader(sd, 1e-5)
    x = F.prelu(r.bn("input_layer.1", F.conv2d(x, r("input_layer.0.weight"), padding=1)), r("input_layer.2.weight"))
    i, cin = 0, 64
    for depth, n in zip((64, 128, 256, 512), units):
        for j in range(n):
            b, stride = f"body.{i}", 2 if j == 0 else 1
            if cin == depth:
                sc = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride)
            else:
                sc = r.bn(f"{b}.shortcut_layer.1", F.conv2d(x, r(f"{b}.shortcut_layer.0.weight"), stride=stride))
            y = F.conv2d(r.bn(f"{b}.res_layer.0", x), r(f"{b}.res_layer.1.weight"), padding=1)
            y = F.prelu(y, r(f"{b}.res_layer.2.weight"))
            y = r.bn(f"{b}.res_layer.4", F.conv2d(y, r(f"{b}.res_layer.3.weight"), stride=stride, padding=1))
            x, cin, i = y + sc, depth, i + 1
    f = F.prelu(x.reshape(x.shape[0], -1), r("quality.1.weight"))
    q = F.linear(f, r("quality.3.weight"), r("quality.3.bias"))
    r.done()
    return q[:, 0]


def mobilefacenet_forward(sd, x, prefix="base_model."):
    r = _Reader(sd, 1e-5)

    def cb(p, x, stride, pad, groups, prelu=True):
        x = r.bn(f"{p}.bn", F.conv2d(x, r(f"{p}.conv.weight"), stride=stride, padding=pad, groups=groups))
        return F.prelu(x, r(f"{p}.prelu.weight")) if prelu else x

    for name, kind, cin, cout, kern, stride, g in _mfn_plan():
        p = prefix + name
        if kind == "cb":
            x = cb(p, x, stride, kern // 2, g)
        elif kind == "lb":
            x = cb(p, x, stride, 0, g, prelu=False)
        else:
            y = cb(f"{p}.conv", x, 1, 0, 1)
            y = cb(f"{p}.conv_dw", y, stride, 1, g)
            y = cb(f"{p}.project", y, 1, 0, 1, prelu=False)
            x = x + y if kind == "dwr" else y
    e = F.linear(x.flatten(1), r(f"{prefix}linear.weight"))
    e = r.bn(f"{prefix}bn", e)
    return e / e.norm(dim=1, keepdim=True), r


def ediffiqa_forward(sd, x, layers=None):
    if layers is None:
        e, r = mobilefacenet_forward(sd, x)
        r.done("base_model.")
    else:
        e = iresnet_forward(sd, x, layers, prefix="base_model.")[0]
    h = F.linear(e, sd["mlp.l1.weight"], sd["mlp.l1.bias"])
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))  # exact GELU
    return F.linear(h, sd["mlp.l2.weight"], sd["mlp.l2.bias"])[:, 0]


# -- the methods ------------------------------------------------------------------------------------------------

def normalize_input(images_uint8_rgb: np.ndarray, channel_order: str, mean: float, std: float) -> torch.Tensor:
    """NHWC uint8 RGB -> NCHW float32 as the official pipelines: channels reversed for BGR, (x/255-mean)/std."""
    a = images_uint8_rgb[..., ::-1] if channel_order == "bgr" else images_uint8_rgb
    x = (a.astype(np.float64) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def magface(sd, x, layers, eps=2e-5):
    with torch.no_grad():
        e = iresnet_forward(sd, x, layers, eps)[0]
    return np.linalg.norm(e.double().numpy(), axis=1)


def serfiq(sd, x, layers, T, p, seed, alpha=130.0, r=0.88, eps=1e-5):
    """T whole forward passes per image, each with its own dropout mask on the flattened feature before fc; the
    masks drawn as the package documents (torch.Generator(seed), torch.rand(T, 25088) >= p, / (1 - p))."""
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(T, 512 * 49, generator=g) >= p).float() / (1 - p)
    paper, released = [], []
    with torch.no_grad():
        for i in range(x.shape[0]):
            embs = [iresnet_forward(sd, x[i:i + 1], layers, eps, feature_mask=masks[t], check=False)[0][0].double()
                    .numpy() for t in range(T)]
            embs = [e / np.linalg.norm(e) for e in embs]
            dists = [np.linalg.norm(embs[a] - embs[b]) for a in range(T) for b in range(a + 1, T)]
            s = 2.0 * (1.0 / (1.0 + np.exp(np.mean(dists))))
            paper.append(s)
            released.append(1.0 / (1.0 + np.exp(-(alpha * (s - r)))))
    return np.array(paper), np.array(released)


def grafiqs(sd, x, layers, eps=1e-5):
    """One image at a time: BN statistics collected by the forward, loss with F.mse_loss, gradients with
    torch.autograd.grad w.r.t. the image and the four stage outputs; -> {group: -abs sum} (float64)."""
    out = {g: [] for g in ("image", "block1", "block2", "block3", "block4")}
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        record: list = []
        _, _, blocks = iresnet_forward(sd, xi, layers, eps, record=record)
        loss = torch.zeros(())
        for a, rm, rv in record:
            mean = a.mean(dim=[0, 2, 3])
            var = a.var(dim=[0, 2, 3], unbiased=False)
            loss = loss + F.mse_loss(mean, rm) + F.mse_loss(var, rv)
        loss = loss / len(record)
        grads = torch.autograd.grad(loss, [xi] + blocks)
        for g, gr in zip(out, grads):
            out[g].append(-float(gr[0].double().abs().sum()))
    return {g: np.array(v) for g, v in out.items()}
