"""The official model code of each baseline's repository beside vitfiqa.baselines: the same random weights (in the
official layout), the same images; prints and writes the largest relative difference per method.

The official files are not part of vitfiqa. Put them, renamed, in one folder (--official DIR):

    crfiqa_iresnet.py    fdbtrs/CR-FIQA backbones/iresnet.py
    magface_iresnet.py   IrvingMeng/MagFace models/iresnet.py
    grafiqs_iresnet.py   jankolf/GraFIQs backbones/iresnet.py
    grafiqs_bn.py        jankolf/GraFIQs backbones/bn.py            (BN_Model: its hooks and loss)
    sdd_model.py         Tencent/TFace quality/generate_pseudo_labels/extract_embedding/model/model.py
    ediff_mobilenet.py   LSIbabnikz/eDifFIQA model/mobilenet.py
    ediff_mlp.py         LSIbabnikz/eDifFIQA model/mlp.py
    ediff_ediffiqa.py    LSIbabnikz/eDifFIQA model/ediffiqa.py

GraFIQs is run as extract_grafiqs.py does (BN_Model.get_BN, autograd.grad w.r.t. the image and blocks 1-4, one
image at a time). SER-FIQ's released code needs MXNet and its ArcFace symbol file: not run here.

    python benchmarks/baselines_official.py --official DIR [--layers 1,1,1,1] [--out FILE]
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.autograd as autograd

ap = argparse.ArgumentParser()
ap.add_argument("--official", required=True)
ap.add_argument("--layers", default="1,1,1,1", help="blocks per stage of the iResNet / IR networks (3,4,14,3: "
                                                    "the full -50 depth)")
ap.add_argument("--out")
args = ap.parse_args()
sys.path.insert(0, os.path.abspath(args.official))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import crfiqa_iresnet, grafiqs_iresnet, grafiqs_bn, magface_iresnet, sdd_model, ediff_mobilenet, ediff_mlp, ediff_ediffiqa  # noqa: E401,E402

import vitfiqa.baselines as vb  # noqa: E402
from tests.reference.baselines import random_state  # noqa: E402

torch.manual_seed(0)
L = tuple(int(v) for v in args.layers.split(","))
imgs = np.random.default_rng(3).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
lines = []


def report(text):
    print(text, flush=True)
    lines.append(text)

def rnd(model, seed):
    sd = random_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed)
    sd = {k: v.to(model.state_dict()[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd); model.eval(); return sd

def inp(order, mean, std):  # what the official pipeline feeds: channels as given, (x/255-mean)/std
    a = imgs[..., ::-1] if order == "bgr" else imgs
    return torch.from_numpy(np.ascontiguousarray(((a / 255.0 - mean) / std).transpose(0, 3, 1, 2))).float()

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

# CR-FIQA: official iresnet50(qs=1) structure at depth L, forward -> (x, qs)
off = crfiqa_iresnet.IResNet(crfiqa_iresnet.IBasicBlock, list(L), num_features=512, qs=1, use_se=False)
sd = rnd(off, 1)
with torch.no_grad():
    want = off(inp("rgb", .5, .5))[1][:, 0].numpy()
got = vb.score("crfiqa", vb.load("crfiqa_s", checkpoint=sd, overrides={"layers": L}), imgs).scores["crfiqa"].numpy()
report(f"| CR-FIQA | {rel(got, want):.1e} |")

# MagFace: official iresnet (eps 2e-5), its checkpoint layout module.features.*
off = magface_iresnet.IResNet(magface_iresnet.IBasicBlock, list(L), num_classes=512)
sd = rnd(off, 2)
ck = {"state_dict": {**{"module.features." + k: v for k, v in sd.items()}, "module.fc.weight": torch.randn(512, 5)}}
with torch.no_grad():
    want = off(inp("bgr", 0, 1)).norm(dim=1).numpy()
got = vb.score("magface", vb.load("magface_r100", checkpoint=ck, overrides={"layers": L}), imgs).scores["magface"].numpy()
report(f"| MagFace | {rel(got, want):.1e} |")

# GraFIQs: official iresnet + BN_Model.get_BN + autograd.grad as extract_grafiqs.py, one image at a time
off = grafiqs_iresnet.IResNet(grafiqs_iresnet.IBasicBlock, list(L), num_features=512, use_se=False)
sd = rnd(off, 3)
off.return_intermediate = True
bnm = grafiqs_bn.BN_Model(off, "cpu")
x = inp("rgb", .5, .5)
want = {k: [] for k in ["image", "block1", "block2", "block3", "block4"]}
for i in range(2):
    image = x[i:i + 1].clone().requires_grad_(True)
    bn_score, (emb, b1, b2, b3, b4, bn) = bnm.get_BN(image)
    grads = autograd.grad(outputs=bn_score, inputs=[image, b1, b2, b3, b4])
    for idx, key in enumerate(want):
        want[key].append(float(torch.abs(grads[idx][0]).sum()))
got = vb.score("grafiqs", vb.load("grafiqs_r100", checkpoint=sd, overrides={"layers": L}), imgs).scores
for k in want:
    report(f"| GraFIQs ({k}) | {rel(-got['grafiqs_' + k].numpy(), want[k]):.1e} |")

# SDD-FIQA: official R50(use_type="Qua") structure (units from L), module.-prefixed checkpoint
blocks_fn = sdd_model.get_blocks
sdd_model.get_blocks = lambda n: [sdd_model.get_block(c, d, u) for (c, d), u in zip([(64, 64), (64, 128), (128, 256), (256, 512)], L)]
off = sdd_model.Backbone([112, 112], 50, "ir", use_type="Qua")
sdd_model.get_blocks = blocks_fn
sd = rnd(off, 4)
with torch.no_grad():
    want = off(inp("rgb", .5, .5))[:, 0].numpy()
got = vb.score("sddfiqa", vb.load("sddfiqa", checkpoint={"module." + k: v for k, v in sd.items()},
                                   overrides={"units": L}), imgs).scores["sddfiqa"].numpy()
report(f"| SDD-FIQA | {rel(got, want):.1e} |")

# eDifFIQA(T): official MobileFaceNet + MLP + eDifFIQA(return_feat=0)
off = ediff_ediffiqa.eDifFIQA(ediff_mobilenet.MobileFaceNet(), ediff_mlp.MLP(512, 1024, 1), return_feat=False)
sd = rnd(off, 5)
with torch.no_grad():
    want = off(inp("rgb", .5, .5))[:, 0].numpy()
got = vb.score("ediffiqa", vb.load("ediffiqa_t", checkpoint=sd), imgs).scores["ediffiqa"].numpy()
report(f"| eDifFIQA(T) | {rel(got, want):.1e} |")

if args.out:
    with open(args.out, "w") as f:
        f.write(f"### Baselines against the official model code (blocks per stage {L}, 2 random images, random "
                "official-layout weights)\n\n| method | max relative difference |\n|---|---|\n"
                + "\n".join(lines) + f"\n\nCommand: python benchmarks/baselines_official.py --official DIR "
                f"--layers {args.layers}\n")
