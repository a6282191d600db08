"""The matrix of vitfiqa.load routes (vitfiqa.sources) x model families: the largest relative difference of each
route's scores from the TorchScript route's on the same model and images (random weights; float32).

    python benchmarks/load_routes.py [--out benchmarks/results/load_routes.md]

The TorchScript route is what a user does by hand: script (or, for transformers, trace a wrapper that returns
the pooled output), save, ``vitfiqa.load(file)`` with the image size and final norm the model needs. Each other
route starts from the model object (or, for presets, a ``torch.save`` state dict of random weights as the
"official checkpoint"). Methods: ATTN-FIQA and ViTNT-FIQA (plus ViT-FIQA for the quality-token preset).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(__file__))
import vitfiqa  # noqa: E402
from vitfiqa.models import FaceViT, export_torchscript, preset  # noqa: E402

from _common import machine  # noqa: E402
from tests.models.cases import spread  # noqa: E402
from tests.models.timm_style import TimmStyleViT  # noqa: E402
from tests.test_sources import HF, UserExport, hf_model, random_checkpoint  # noqa: E402


def ts_bytes(module: nn.Module, how: str, x: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.script(module) if how == "script" else torch.jit.trace(module, x)
    buf = io.BytesIO()
    torch.jit.save(ts, buf)
    return buf.getvalue()


def traced(module: nn.Module, x: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, x)


def max_rel(a: vitfiqa.QualityModel, b: vitfiqa.QualityModel, x: torch.Tensor, methods) -> float:
    ra = a.score(x, methods=methods, preprocess=False).scores
    rb = b.score(x, methods=methods, preprocess=False).scores
    return max(((ra[k].double() - rb[k].double()).abs() / rb[k].double().abs()).max().item() for k in rb)


def images(size: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def rows(tmp: str, presets: list[str]):
    methods = ["attn", "vitnt"]
    # transformers: the object, and a traced ScriptModule object of the user's wrapper
    for name in HF:
        model, x = hf_model(name), images(32)
        ref = vitfiqa.load(ts_bytes(UserExport(model), "trace", x), dict(image_size=32, final_norm=HF[name][3]))
        yield name, "transformers object", max_rel(vitfiqa.load(model), ref, x, methods)
        yield name, "ScriptModule object (traced)", max_rel(
            vitfiqa.load(traced(UserExport(model), x), dict(image_size=32, final_norm=HF[name][3])), ref, x, methods)
    # timm layout: with pretrained_cfg (image size from it), as a ScriptModule object
    torch.manual_seed(0)
    timm = spread(TimmStyleViT(img_size=48, patch_size=8, dim=48, depth=4, num_heads=3))
    timm.pretrained_cfg = {"input_size": (3, 48, 48)}
    x = images(48)
    ref = vitfiqa.load(ts_bytes(timm, "script", x), dict(image_size=48))
    yield "timm-layout ViT", "timm object", max_rel(vitfiqa.load(timm), ref, x, methods)
    yield "timm-layout ViT", "ScriptModule object (scripted)", max_rel(vitfiqa.load(torch.jit.script(timm)), ref, x,
                                                                      methods)
    # eager face ViTs (insightface and CVLFace layouts)
    for fam, kw in (("face ViT, insightface layout", dict(embed_dim=48, depth=3, num_heads=4, num_features=32)),
                    ("face ViT, CVLFace layout", dict(patch_size=8, embed_dim=32, depth=3, num_heads=4,
                                                      mlp_ratio=2.0, num_features=32))):
        torch.manual_seed(0)
        m = spread(FaceViT(**kw))
        x = images(112)
        ref = vitfiqa.load(export_torchscript(m, os.path.join(tmp, "ref.pt")))
        yield fam, "eager nn.Module", max_rel(vitfiqa.load(m), ref, x, methods)
        yield fam, "ScriptModule object (scripted)", max_rel(vitfiqa.load(torch.jit.script(m)), ref, x, methods)
        yield fam, "ScriptModule object (traced)", max_rel(vitfiqa.load(traced(m, x)), ref, x, methods)
        yield fam, "TorchScript bytes", max_rel(vitfiqa.load(open(ref.source, "rb").read()), ref, x, methods)
    # presets with a random "official checkpoint"
    for name in presets:
        ckpt = os.path.join(tmp, f"{name}.pt")
        m = random_checkpoint(name, ckpt)
        x = images(112, n=2)
        ref = vitfiqa.load(export_torchscript(m, os.path.join(tmp, "ref.pt")))
        meth = methods + (["vitfiqa"] if name == "vitfiqa_token" else [])
        yield f"preset {name}", "preset + checkpoint", max_rel(vitfiqa.load(name, checkpoint=ckpt), ref, x, meth)
        os.remove(ckpt)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "load_routes.md"))
    ap.add_argument("--presets", default="insightface_vit_t,cvlface_vit_s,vitfiqa_token",
                    help="comma-separated presets to measure (the vit_b ones are large)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        table = list(rows(tmp, args.presets.split(",")))
    import transformers

    lines = [f"# vitfiqa.load routes against the TorchScript route\n",
             f"`python benchmarks/load_routes.py` on {machine()}; torch {torch.__version__}, transformers "
             f"{transformers.__version__}; {time.perf_counter() - start:.0f} s. Random weights, float32; the largest "
             "relative difference over the images and methods (ATTN-FIQA, ViTNT-FIQA; ViT-FIQA for "
             "vitfiqa_token) between each route's scores and the TorchScript route's on the same model.\n",
             "| model family | route | max relative difference |", "|---|---|---|"]
    lines += [f"| {fam} | {route} | {err:.1e} |" for fam, route, err in table]
    worst = max(err for _, _, err in table)
    lines.append(f"\nLargest over the whole matrix: {worst:.1e} (bound 1e-5).")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    if worst > 1e-5:
        raise SystemExit(f"a route differs from the TorchScript route by {worst:.1e}")


if __name__ == "__main__":
    main()
