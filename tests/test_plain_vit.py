"""Which ViTs vitfiqa serves, and how: biased attention (ATTN-FIQA's attn_logits option), models that are not
plain token-sequence ViTs (refused with a reason), methods that cannot be served (noted; only they raise).
Pure PyTorch models made here; the Hugging Face zoo is tests/test_compat_hf.py."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitfiqa

from .reference import methods as ref
from .models.timm_style import TimmStyleViT

RTOL = 1e-5


def close(actual, expected, rtol=RTOL):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=0)


@pytest.mark.parametrize("case", ["timm_relpos-script", "timm_relpos-trace", "timm_relpos_explicit-script",
                                  "timm_relpos_explicit-trace"])
def test_biased_attention_default_is_qk_and_full_adds_the_bias(case, model_cases, loaded):
    c = model_cases[case]
    m = loaded(case)
    assert m.info["biased_attention_blocks"] == list(range(m.num_blocks))
    assert any("attn_logits='qk'" in n and "bias" in n for n in m.info["notes"])
    x = c.images(3)
    _, _, inputs = ref.run(c.eager, x)
    last = m.num_blocks - 1
    qk = ref.logits(c.eager, inputs[-1], last)
    full = ref.logits(c.eager, inputs[-1], last, full=True)
    default = m.score(x, methods=["attn"], heatmaps=True)
    close(default.scores["attn"], qk.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(default.heatmaps["attn"], ref.grid_heatmaps(qk.mean(1).mean(1)[:, 1:], c.grid, (32, 32)),
                               rtol=1e-5, atol=1e-5)
    with_bias = m.score(x, methods=["attn"], attn_logits="full", return_captures=True)
    close(with_bias.scores["attn"], full.mean(dim=(1, 2, 3)))
    assert not torch.allclose(with_bias.scores["attn"], default.scores["attn"], rtol=1e-3)
    torch.testing.assert_close(with_bias.captures[f"attention_logits.{last}"].double(), full, rtol=1e-4, atol=1e-5)
    raw = m.capture(x, attention_blocks=[last])["attention_logits"][last]
    torch.testing.assert_close(raw.double(), qk, rtol=1e-4, atol=1e-5)
    # The attention weights ViTNT uses are the model's own, bias included, whatever attn_logits says.
    weighted = m.score(x, methods=["vitnt"], vitnt_weighting="attention", attn_logits="qk").scores["vitnt"]
    close(weighted, ref.vitnt_fiqa(c.eager, x, c.prefix, weighting="attention")[0])


def test_unbiased_model_has_no_bias_note_and_both_choices_agree(model_cases, loaded):
    c = model_cases["timm_explicit-trace"]
    m = loaded("timm_explicit-trace")
    assert m.info["biased_attention_blocks"] == [] and not any("bias" in n for n in m.info["notes"])
    x = c.images(2)
    a = m.score(x, methods=["attn"]).scores["attn"]
    torch.testing.assert_close(m.score(x, methods=["attn"], attn_logits="full").scores["attn"], a, rtol=0, atol=0)


def test_attn_logits_rejects_unknown_values(loaded):
    m = loaded("timm_relpos-trace")
    with pytest.raises(ValueError, match="attn_logits must be 'qk'"):
        m.score(torch.randn(1, 3, 32, 32), methods=["attn"], attn_logits="biased")
    with pytest.raises(ValueError, match="attn_logits must be 'qk'"):
        m.capture(torch.randn(1, 3, 32, 32), attention_blocks=[0], attn_logits="")


# ---- models that are not plain ViTs -------------------------------------------------------------------------
class _Attn(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(dim), _Attn(dim)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class _Stage(nn.Module):
    def __init__(self, dim, pool: bool):
        super().__init__()
        self.pool = nn.Conv2d(dim, dim, 2, 2) if pool else nn.Identity()
        self.blocks = nn.Sequential(_Block(dim), _Block(dim))

    def forward(self, t, side: int):
        t = self.pool(t.transpose(1, 2).reshape(t.shape[0], -1, side, side)).flatten(2).transpose(1, 2)
        return self.blocks(t)


class PooledStages(nn.Module):
    """PiT-like: two stages of blocks (stages.#.blocks.#) with a strided convolution pooling the token grid
    between them."""

    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.stages = nn.ModuleList([_Stage(dim, False), _Stage(dim, True)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.stages[0](t, 8)
        t = self.stages[1](t, 8)
        return self.norm(t).mean(1)


class NamedStages(nn.Module):
    """Stages named apart (stage1.#, stage2.#) with pooling between them."""

    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.stage1 = nn.Sequential(_Block(dim), _Block(dim))
        self.stage2 = nn.Sequential(_Block(dim), _Block(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        t = self.stage1(self.embed(x).flatten(2).transpose(1, 2))
        t = F.avg_pool1d(t.transpose(1, 2), 4).transpose(1, 2)
        return self.norm(self.stage2(t)).mean(1)


class ShiftedWindowBlock(nn.Module):
    """Swin-like: the token grid is rolled before (window) attention."""

    def __init__(self, dim=16, side=8):
        super().__init__()
        self.side, self.blk = side, _Block(dim)

    def forward(self, x):
        b, n, c = x.shape
        g = torch.roll(x.reshape(b, self.side, self.side, c), shifts=(2, 2), dims=(1, 2))
        return self.blk(g.reshape(b, n, c))


class WindowBlock(nn.Module):
    """ViTDet-like: the block attends within 4x4 windows of the 8x8 grid (windows batched); its input and
    output are the [B,N,C] token sequence."""

    def __init__(self, dim=16, side=8, window=4):
        super().__init__()
        self.side, self.window, self.blk = side, window, _Block(dim)

    def forward(self, t):
        b, n, c = t.shape
        s, w = self.side, self.window
        win = t.reshape(b, s // w, w, s // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        win = self.blk(win)
        return win.reshape(b, s // w, s // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n, c)


class Windowed(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(WindowBlock(dim), WindowBlock(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.blocks(self.embed(x).flatten(2).transpose(1, 2))).mean(1)


class SwinLike(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(ShiftedWindowBlock(dim), ShiftedWindowBlock(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.blocks(self.embed(x).flatten(2).transpose(1, 2))).mean(1)


def _export(model, how, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.script(model.eval()) if how == "script" else torch.jit.trace(model.eval(), x)
    path = tmp_path / f"{type(model).__name__}_{how}.pt"
    ts.save(str(path))
    return path


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("model, found", [
    (PooledStages, r"between blocks '(stages\.)?0\.blocks\.1' and '(stages\.)?1\.blocks\.0' the tokens pass through aten::"),
    (NamedStages, r"attention blocks in more than one repeated module pattern \('stage1\.#\.attn' x2, 'stage2\.#\.attn' x2\)"),
    (SwinLike, r"shifted-window attention \(aten::roll in 'blocks\.[01]'"),
])
def test_hierarchical_models_are_refused_at_load(model, found, how, tmp_path):
    torch.manual_seed(0)
    path = _export(model(), how, tmp_path)
    with pytest.raises(ValueError, match="not a plain ViT: .*" + found):
        vitfiqa.load(path, image_size=(32, 32))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_windowed_attention_is_refused_when_it_runs(how, tmp_path):
    torch.manual_seed(0)
    m = vitfiqa.load(_export(Windowed(), how, tmp_path), image_size=(32, 32))
    with pytest.raises(ValueError, match=r"not a plain ViT: the attention of block 'blocks\.1' runs on 8 sequences "
                                         r"for 2 images"):
        m.score(torch.randn(2, 3, 32, 32), methods=["attn"])


class ChannelAttention(nn.Module):
    """XCiT-like: attention between channels (a [D,D] map per head), not between tokens."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # [B,H,D,D]
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class ChannelBlock(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(dim), ChannelAttention(dim)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class ChannelViT(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(ChannelBlock(dim), ChannelBlock(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.blocks(self.embed(x).flatten(2).transpose(1, 2))).mean(1)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_channel_attention_is_refused_when_it_runs(how, tmp_path):
    torch.manual_seed(0)
    m = vitfiqa.load(_export(ChannelViT(), how, tmp_path), image_size=(32, 32))
    with pytest.raises(ValueError, match=r"not a plain ViT: the attention of block 'blocks\.1' has 8 keys but the "
                                         r"tokens entering it have shape \[2, 64, 16\]"):
        m.score(torch.randn(2, 3, 32, 32), methods=["attn"])


class NormAfterPooling(TimmStyleViT):
    """timm's fc_norm layout: no norm on the tokens; a LayerNorm after average pooling."""

    def __init__(self):
        super().__init__(img_size=32, patch_size=8, dim=48, depth=3, num_heads=3)
        self.norm = nn.Identity()
        self.fc_norm = nn.LayerNorm(48)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.fc_norm(self.blocks(x)[:, 1:].mean(1)))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_method_that_cannot_be_served_is_noted_and_only_it_raises(how, tmp_path):
    from .models.cases import spread

    model = spread(NormAfterPooling(), seed=4)
    m = vitfiqa.load(_export(model, how, tmp_path), image_size=(32, 32))
    assert not m.info["has_final_norm"]
    # the note names the norm forward applies after pooling (issue 19: the module that is really there)
    assert any("final_norm='fc_norm'" in n for n in m.info["notes"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    close(m.score(x, methods=["attn"]).scores["attn"], ref.attn_fiqa(model, x))
    with pytest.raises(ValueError, match="no final LayerNorm"):
        m.score(x, methods=["vitnt"])
    # Named, the norm after pooling serves ViTNT-FIQA (the reference applies model.norm: make it that norm).
    named = vitfiqa.load(_export(model, how, tmp_path), image_size=(32, 32), final_norm="fc_norm")
    model.norm = model.fc_norm
    close(named.score(x, methods=["vitnt"]).scores["vitnt"], ref.vitnt_fiqa(model, x, 1)[0])
