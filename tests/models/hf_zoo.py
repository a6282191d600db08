"""The Hugging Face zoo, measured: random-weight transformers models exported to TorchScript, scored by vitfiqa
and compared with an eager reference (forward hooks on the library's own modules + the definitions of
docs/methods.md written out; nothing here calls vitfiqa's C++ core except the scoring under test).

Used by tests/test_compat_hf.py (the `compat` extra: `pip install ".[compat]"`) and, as a script, to write
the compatibility table in docs/models.md from the same checks:

    python -m tests.models.hf_zoo --readme docs/models.md
"""
from __future__ import annotations

import argparse
import io
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

RTOL = 1e-5
IMAGE = 32  # input side; patch 8 -> a 4x4 grid, small enough for CI
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=IMAGE,
            patch_size=8)


@dataclass
class Family:
    """One transformers model family as a user would export it."""

    name: str
    build: Callable[[str], nn.Module]  # attn_implementation -> eager nn.Module (random weights, eval mode)
    prefix: int = 0                     # prefix tokens (CLS, distillation, registers)
    final_norm: str | None = None       # the final_norm= option a user needs (norm after pooling), else None
    biased: bool = False                # attention adds a relative-position bias
    plain: bool = True                  # False: vitfiqa must refuse it


class Exported(nn.Module):
    """What a user traces: pixels in, the model's embedding (pooled output, else the token sequence) out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        out = self.m(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state


def _spread(model: nn.Module, seed: int) -> nn.Module:
    """Random weights far from the near-zero init (zero relative-position tables included), so that logits
    and distances are large enough for a relative comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def _hf(config_cls: str, model_cls: str, **overrides):
    def build(impl: str) -> nn.Module:
        import transformers

        kw = {**TINY, **overrides}
        config = getattr(transformers, config_cls)(**kw)
        config._attn_implementation = impl
        torch.manual_seed(0)
        return Exported(getattr(transformers, model_cls)(config))

    return build


def families() -> list[Family]:
    return [
        Family("ViT", _hf("ViTConfig", "ViTModel"), prefix=1),
        Family("DeiT (distilled)", _hf("DeiTConfig", "DeiTModel"), prefix=2),
        Family("DINOv2", _hf("Dinov2Config", "Dinov2Model", mlp_ratio=2), prefix=1),
        Family("DINOv2 with registers", _hf("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", mlp_ratio=2,
                                             num_register_tokens=4), prefix=5),
        Family("BEiT (relative-position bias, mean pooling)",
               _hf("BeitConfig", "BeitModel", use_relative_position_bias=True, use_mean_pooling=True), prefix=1,
               final_norm="m.pooler.layernorm", biased=True),
        Family("I-JEPA", _hf("IJepaConfig", "IJepaModel"), prefix=0),
        Family("CLIP vision", _hf("CLIPVisionConfig", "CLIPVisionModel"), prefix=1, final_norm="m.post_layernorm"),
        Family("SigLIP vision (attention-pooling head)", _hf("SiglipVisionConfig", "SiglipVisionModel"), prefix=0),
        Family("Swin", _swin, plain=False),
        Family("PVT", _pvt, plain=False),
        Family("ViTDet (windowed blocks)", _vitdet, plain=False),
    ]


def _swin(impl: str) -> nn.Module:
    import transformers

    config = transformers.SwinConfig(image_size=IMAGE, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                     window_size=4)
    config._attn_implementation = impl
    return Exported(transformers.SwinModel(config))


def _pvt(impl: str) -> nn.Module:
    import transformers

    config = transformers.PvtConfig(image_size=IMAGE, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                                    hidden_sizes=[16, 32], patch_sizes=[4, 2], strides=[4, 2],
                                    num_attention_heads=[1, 2], mlp_ratios=[2, 2])
    config._attn_implementation = impl
    return Exported(transformers.PvtModel(config))


def _vitdet(impl: str) -> nn.Module:
    import transformers

    config = transformers.VitDetConfig(image_size=IMAGE, pretrain_image_size=IMAGE, patch_size=4, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=4, window_size=4,
                                       window_block_indices=[0])
    config._attn_implementation = impl
    return Exported(transformers.VitDetModel(config))


# ---------------------------------------------------------------------------------------------------------
# Eager reference: hooks on the library's modules, explicit math
# ---------------------------------------------------------------------------------------------------------
def _layers(model: nn.Module) -> nn.ModuleList:
    n = model.m.config.num_hidden_layers
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise LookupError("no module list of the transformer layers")


def _attention(layer: nn.Module) -> nn.Module:
    for name in ("attention", "self_attn"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise LookupError("no attention module in the layer")


@dataclass
class Recorded:
    q: list = field(default_factory=list)        # [B,H,N,D] per layer
    k: list = field(default_factory=list)
    bias: list = field(default_factory=list)     # additive mask/bias given to the attention, or None
    outputs: list = field(default_factory=list)  # [B,N,C] per layer
    final_norm: nn.Module | None = None


def record(model: nn.Module, x: torch.Tensor, final_norm: str | None) -> Recorded:
    rec = Recorded()
    heads = model.m.config.num_attention_heads
    hooks = []

    def split(t):  # [B,N,H*D] -> [B,H,N,D]
        b, n, hd = t.shape
        return t.reshape(b, n, heads, hd // heads).transpose(1, 2).double()

    for layer in _layers(model):
        attn = _attention(layer)
        hooks.append(attn.q_proj.register_forward_hook(lambda m, i, o: rec.q.append(split(o))))
        hooks.append(attn.k_proj.register_forward_hook(lambda m, i, o: rec.k.append(split(o))))

        def pre(m, args, kwargs):
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            rec.bias.append(None if mask is None else mask.double())

        hooks.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.register_forward_hook(
            lambda m, i, o: rec.outputs.append(o[0] if isinstance(o, tuple) else o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if final_norm is not None:
        rec.final_norm = model.get_submodule(final_norm)
    else:  # the norm the model applies to the last hidden state
        m = model.m
        rec.final_norm = next(getattr(m, n) for n in ("layernorm", "post_layernorm") if hasattr(m, n))
    return rec


def reference_logits(rec: Recorded, layer: int, full: bool) -> torch.Tensor:
    q, k = rec.q[layer], rec.k[layer]
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if full and rec.bias[layer] is not None:
        logits = logits + rec.bias[layer]
    return logits


def reference_attn(rec: Recorded, full: bool = False) -> torch.Tensor:
    return reference_logits(rec, -1, full).mean(dim=(1, 2, 3))


def reference_vitnt(rec: Recorded, prefix: int, weighting: str, s: float = 8.0) -> torch.Tensor:
    with torch.no_grad():
        z = [F.normalize(rec.final_norm(o)[:, prefix:].double(), dim=-1) for o in rec.outputs]
    d = sum(torch.linalg.vector_norm(b - a, dim=-1) for a, b in zip(z, z[1:])) / (len(z) - 1)
    q = 2.0 / (1.0 + torch.exp(s * d))
    if weighting == "uniform":
        return q.mean(1)
    probs = torch.softmax(reference_logits(rec, -1, full=True), dim=-1)  # the model's own attention
    received = probs.mean(1).sum(1)[:, prefix:]
    return (q * received / received.sum(1, keepdim=True)).sum(1)


# ---------------------------------------------------------------------------------------------------------
# One check: export, load, score every applicable method, compare
# ---------------------------------------------------------------------------------------------------------
def export(model: nn.Module, how: str, x: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            ts = torch.jit.trace(model, x) if how == "trace" else torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(ts, buf)
    return buf.getvalue()


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def close(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest relative error; raises if above RTOL."""
    err = ((actual.double() - expected.double()).abs() / expected.double().abs()).max().item()
    if not err <= RTOL:
        raise AssertionError(f"relative error {err:.2e} > {RTOL:g}: {actual.tolist()} vs {expected.tolist()}")
    return err


def check(family: Family, impl: str, how: str, seed: int = 0) -> dict:
    """Export one model and compare vitfiqa with the reference. Returns a result row; raises AssertionError
    on a wrong score (never returns a mismatch as a row)."""
    import vitfiqa

    row = {"family": family.name, "attention": impl, "export": how, "status": "", "works": [], "why": ""}
    try:
        model = family.build(impl)
    except ValueError as e:  # transformers offers no such attention for this family
        row.update(status="not offered", why=first_line(e)[:120])
        return row
    model = _spread(model, seed).double() if family.plain else model.eval()
    # float64 end to end: ATTN-FIQA is a signed mean that can land near zero for an image, where float32
    # rounding alone exceeds 1e-5 relative; float32 models are checked by tests/test_methods.py.
    x = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed + 1))
    if family.plain:
        x = x.double()
    try:
        data = export(model, how, x)
    except Exception as e:  # the library's model cannot be exported this way
        row.update(status="not exportable", why=first_line(e)[:160])
        return row
    stage = "at load"
    try:
        m = vitfiqa.load(data, image_size=(IMAGE, IMAGE), final_norm=family.final_norm, dtype=x.dtype)
        stage = "when scored"
        if not family.plain:
            m.score(x, methods=["attn"])  # windowed attention is only seen when it runs
    except ValueError as e:
        if family.plain:
            raise AssertionError(f"{family.name} ({impl}, {how}) was refused: {e}") from e
        row.update(status=f"refused {stage}", why=str(e))
        return row
    if not family.plain:
        raise AssertionError(f"{family.name} ({impl}, {how}) should be refused but loaded: {m.info}")

    rec = record(model, x, family.final_norm)
    info = m.info
    biased_note = any("bias or mask" in n for n in info["notes"])
    if biased_note != family.biased:
        raise AssertionError(f"bias note {biased_note} but the family is biased={family.biased}: {info['notes']}")
    r = m.score(x, methods=["attn", "vitnt"], return_captures=True)
    close(r.scores["attn"], reference_attn(rec, full=False))
    row["works"].append("attn")
    if family.biased:
        full = m.score(x, methods=["attn"], attn_logits="full").scores["attn"]
        close(full, reference_attn(rec, full=True))
        if torch.allclose(full, r.scores["attn"], rtol=1e-3):
            raise AssertionError("the bias does not change the scores: the test cannot tell the two apart")
        row["works"].append("attn full")
    close(r.scores["vitnt"], reference_vitnt(rec, family.prefix, "uniform"))
    weighted = m.score(x, methods=["vitnt"], vitnt_weighting="attention").scores["vitnt"]
    close(weighted, reference_vitnt(rec, family.prefix, "attention"))
    row["works"].append("vitnt")
    notes = [n for n in info["notes"] if "bias or mask" not in n]
    if family.biased:
        notes.insert(0, "relative-position bias: default qk, attn_logits='full' adds it")
    if family.final_norm:
        notes.insert(0, f"norm after pooling: ViTNT needs final_norm='{family.final_norm}'")
    row.update(status="ok", why="; ".join(notes))
    return row


def cases() -> list[tuple[Family, str, str]]:
    """Every family traced with eager and SDPA attention, and scripted (eager) where the library allows."""
    return [(f, impl, "trace") for f in families() for impl in ("eager", "sdpa")] + \
           [(f, "eager", "script") for f in families()]


# ---------------------------------------------------------------------------------------------------------
# README table
# ---------------------------------------------------------------------------------------------------------
BEGIN, END = "<!-- compat-table:begin -->", "<!-- compat-table:end -->"


def table(rows: list[dict]) -> str:
    """Markdown table; scripting failures that read the same for every family become one line under it."""
    def reason(r):  # without object addresses, which differ from run to run
        return re.sub(r" at 0x[0-9a-f]+", "", re.sub(r"<function (\w+)\.", "<function ...", r["why"]))

    unscriptable = [r for r in rows if r["export"] == "script" and r["status"] == "not exportable"]
    same = len({reason(r) for r in unscriptable}) == 1 and len(unscriptable) > 1
    lines = ["| model family | export | attention | result | methods matching the reference (1e-5 rel) | notes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if same and r in unscriptable:
            continue
        why = r["why"].replace("|", "/")
        lines.append(f"| {r['family']} | {r['export']} | {r['attention']} | {r['status']} | "
                     f"{', '.join(r['works']) or '-'} | {why} |")
    if same:
        lines.append(f"\n`torch.jit.script` fails for all {len(unscriptable)} families in the library itself "
                     f"(`{reason(unscriptable[0])}`): transformers models are exported by tracing.")
    return "\n".join(lines)


def main(argv=None) -> None:
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", help="write the table between the compat-table markers of this file")
    args = ap.parse_args(argv)
    rows = []
    start = time.perf_counter()
    for family, impl, how in cases():
        rows.append(check(family, impl, how))
    text = (f"transformers {transformers.__version__}, torch {torch.__version__}; {len(rows)} exports checked in "
            f"{time.perf_counter() - start:.0f} s by `python -m tests.models.hf_zoo --readme docs/models.md`.\n\n" + table(rows))
    print(text)
    if args.readme:
        with open(args.readme) as f:
            readme = f.read()
        if BEGIN not in readme or END not in readme:
            raise SystemExit(f"{args.readme} has no {BEGIN} ... {END} markers")
        readme = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{text}\n{END}", readme,
                        flags=re.S)
        with open(args.readme, "w") as f:
            f.write(readme)


if __name__ == "__main__":
    main()
