"""The papers' official model classes (their structure written in tests/models/official.py), one small model per
official configuration, scripted and traced, through every method against tests/reference; official
checkpoint layouts through the presets; the final-norm search and the final_norm option."""
from __future__ import annotations

import warnings

import pytest
import torch

import vitfiqa
from vitfiqa.models import PRESETS, face_vit, load_official_state_dict, preset

from .models.cases import export, spread
from .models.official import InsightfaceViT, NoNormForwardViT, QualityTokenViT
from .reference import methods as ref

RTOL = 1e-5

# name: (small model with the official class's structure and this configuration's patch size, head count and
# MLP ratio; final_norm option; prefix tokens; patch grid; EX-FIQA variant). Widths and depths are reduced.
STRUCTURES = {
    "cvlface_vit_s": (lambda: InsightfaceViT(patch_size=8, embed_dim=32, depth=3, num_heads=8, mlp_ratio=5,
                                             num_features=32, mask_ratio=0.0), None, 0, (14, 14), None),
    "cvlface_vit_b": (lambda: InsightfaceViT(patch_size=8, embed_dim=64, depth=4, num_heads=16, mlp_ratio=3,
                                             num_features=32, mask_ratio=0.0), None, 0, (14, 14), None),
    # The ATTN-FIQA / ViTNT-FIQA repositories' own ViT: blocks return (x, attention), forward has no norm.
    "attn_vitnt_repo_vit_s": (lambda: NoNormForwardViT(patch_size=8, embed_dim=32, depth=3, num_heads=8,
                                                       mlp_ratio=5, num_features=32), "norm", 0, (14, 14), None),
    "attn_vitnt_repo_vit_b": (lambda: NoNormForwardViT(patch_size=8, embed_dim=64, depth=4, num_heads=16,
                                                       mlp_ratio=3, num_features=32), "norm", 0, (14, 14), None),
    "insightface_vit_t": (lambda: InsightfaceViT(patch_size=9, embed_dim=32, depth=3, num_heads=8,
                                                 num_features=32), None, 0, (12, 12), None),
    "insightface_vit_s": (lambda: InsightfaceViT(patch_size=9, embed_dim=48, depth=3, num_heads=8,
                                                 num_features=32), None, 0, (12, 12), None),
    "insightface_vit_b": (lambda: InsightfaceViT(patch_size=9, embed_dim=48, depth=5, num_heads=8,
                                                 num_features=32), None, 0, (12, 12), None),
    "vitfiqa_token": (lambda: QualityTokenViT(embed_dim=48, depth=3, num_heads=8, mode="token"), None, 1, (12, 12), "T"),
    "vitfiqa_crfiqa": (lambda: QualityTokenViT(embed_dim=48, depth=3, num_heads=8, mode="crfiqa"), None, 0, (12, 12), "C"),
    "vitfiqa_full": (lambda: QualityTokenViT(embed_dim=48, depth=3, num_heads=8, mode="full"), None, 1, (12, 12), "C"),
}
CASES = [f"{s}-{how}" for s in STRUCTURES for how in ("script", "trace")]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    built = {}
    for i, (name, (factory, final_norm, prefix, grid, variant)) in enumerate(STRUCTURES.items()):
        torch.manual_seed(100 + i)
        eager = spread(factory(), std=0.1, seed=100 + i)
        for how in ("script", "trace"):
            path = export(eager, how, torch.randn(2, 3, 112, 112), str(root / f"{name}_{how}.pt"))
            built[f"{name}-{how}"] = (eager, vitfiqa.load(path, final_norm=final_norm), prefix, grid, variant)
    return built


def images(n=3, seed=1):
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def close(actual, expected, rtol=RTOL):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_every_method_matches_reference(case, official):
    eager, m, prefix, grid, variant = official[case]
    x = images()
    if "repo" in case:
        assert m.info["final_norm"] == "norm (named by final_norm)"
    else:  # norm(x.float()): the final norm is found behind the cast
        assert m.info["final_norm"].endswith("norm") and m.info["final_norm_ops"] == ["aten::to"]
    r = m.score(x, methods=["attn", "vitnt"], heatmaps=True, heatmap_normalize="global")
    close(r.scores["attn"], ref.attn_fiqa(eager, x))
    torch.testing.assert_close(r.heatmaps["attn"], ref.attn_heatmap(eager, x, prefix, grid, normalize="global"),
                               rtol=0, atol=1e-5)
    close(r.scores["vitnt"], ref.vitnt_fiqa(eager, x, prefix)[0])
    blocks = list(range(m.num_blocks))[:3]
    for attention_blocks in ("last", "all"):
        rw = m.score(x, methods=["vitnt"], vitnt_weighting="attention", vitnt_attention_blocks=attention_blocks,
                     vitnt_blocks=blocks)
        close(rw.scores["vitnt"], ref.vitnt_fiqa(eager, x, prefix, blocks=blocks, weighting="attention",
                                                 attention_blocks=attention_blocks)[0])
    if variant:
        q = m.score(x, methods=["vitfiqa", "exfiqa"])
        close(q.scores["vitfiqa"], ref.vitfiqa(eager, x))
        exits = ref.exit_scores(eager, x, variant)
        close(q.exits, exits)
        depths = list(range(1, m.num_blocks + 1))
        close(q.scores["exfiqa_FW"], ref.fuse(exits, depths, "depth"))


def test_heatmap_normalisation_conventions(official):
    eager, m, prefix, grid, _ = official["cvlface_vit_b-script"]
    x = images(5, seed=2)
    per_image = m.score(x, methods=["attn"], heatmaps=True, heatmap_normalize="image")
    torch.testing.assert_close(per_image.heatmaps["attn"], ref.attn_heatmap(eager, x, prefix, grid, normalize="image"),
                               rtol=0, atol=1e-5)
    # "global" spans the whole call, whatever the batch size; a data set's range over several calls is the
    # min/max of their patch grids, rendered without another forward pass.
    whole = m.score(x, methods=["attn"], heatmaps=True, heatmap_normalize="global")
    split = m.score(x, methods=["attn"], heatmaps=True, heatmap_normalize="global", batch_size=2)
    torch.testing.assert_close(split.heatmaps["attn"], whole.heatmaps["attn"], rtol=0, atol=1e-6)
    parts = [m.score(x[i:i + 2], methods=["attn"], heatmaps=True).heatmap_grids["attn"] for i in (0, 2, 4)]
    grids = torch.cat(parts)
    torch.testing.assert_close(vitfiqa.render_heatmaps(grids, (112, 112)), whole.heatmaps["attn"], rtol=0, atol=1e-6)
    lo, hi = grids.min().item(), grids.max().item()
    fixed = m.score(x[:2], methods=["attn"], heatmaps=True, heatmap_normalize="global", heatmap_range=(lo, hi))
    torch.testing.assert_close(fixed.heatmaps["attn"], whole.heatmaps["attn"][:2], rtol=0, atol=1e-6)
    # Normalising before the resize is not the same as after it (the resized map's extremes are inside).
    after = ref.grid_heatmaps(ref.attn_key_means(eager, x, prefix), grid, (112, 112), normalize="none")
    after = (after - after.min()) / (after.max() - after.min())
    assert (after - whole.heatmaps["attn"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="heatmap.normalize"):
        m.score(x, methods=["attn"], heatmaps=True, heatmap_normalize="batch")
    with pytest.raises(ValueError, match="heatmap[._]range"):
        m.score(x, methods=["attn"], heatmaps=True, heatmap_range=(0, 1))
    with pytest.raises(ValueError, match="value range"):
        m.score(x, methods=["attn"], heatmaps=True, heatmap_normalize="global", heatmap_range=(2, 1))
    with pytest.raises(ValueError, match="vitnt[._]attention_blocks"):
        m.score(x, methods=["vitnt"], vitnt_weighting="attention", vitnt_attention_blocks="first")


class ReshapedNormViT(InsightfaceViT):
    """A forward with contiguous + view + cast between the last block and the final norm."""

    def forward(self, x):
        b = x.shape[0]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x.contiguous().view(b, self.num_patches, self.embed_dim).float())
        return self.feature(torch.reshape(x, (b, self.num_patches * self.embed_dim)))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_final_norm_found_through_views(how, tmp_path):
    eager = spread(ReshapedNormViT(patch_size=8, embed_dim=32, depth=3, num_heads=4, num_features=16), std=0.1)
    m = vitfiqa.load(export(eager, how, torch.randn(2, 3, 112, 112), str(tmp_path / "m.pt")))
    assert {"aten::contiguous", "aten::view", "aten::to"} <= set(m.info["final_norm_ops"])
    x = images(2)
    close(m.score(x, methods=["vitnt"]).scores["vitnt"], ref.vitnt_fiqa(eager, x, 0)[0])
    cap = m.capture(x, token_blocks=[0])
    with torch.no_grad():
        expected = eager.norm(ref.run(eager, x)[1][0])
    torch.testing.assert_close(cap["block_tokens"][0], expected, rtol=1e-5, atol=1e-6)


def test_final_norm_option_errors(official, tmp_path):
    eager = official["attn_vitnt_repo_vit_s-script"][0]
    path = export(eager, "script", None, str(tmp_path / "repo.pt"))
    plain = vitfiqa.load(path)  # loads: ATTN-FIQA needs no norm
    plain.score(images(1), methods=["attn"])
    with pytest.raises(ValueError, match="final_norm='norm'"):
        plain.score(images(1), methods=["vitnt"])
    for bad, message in (("nope", "no submodule 'nope'"), ("blocks.0.mlp.fc1", "not a LayerNorm"),
                         ("norm.", "dotted module path"), ("", "final_norm must be None")):
        with pytest.raises(ValueError, match=message):
            vitfiqa.load(path, final_norm=bad)
    with pytest.raises(ValueError, match="final_norm must be None"):
        vitfiqa.load(path, final_norm=3)
    from vitfiqa.cli import main

    assert main(["inspect", "--model", path, "--final-norm", "norm"]) == 0
    assert main(["inspect", "--model", path, "--final-norm", "feature"]) == 2


# ---- official checkpoint layouts through the presets ----------------------------------------------------

# The official configurations as the official code builds them (class, arguments): the preset must fit.
OFFICIAL_CONFIGS = {
    "cvlface_vit_s": (InsightfaceViT, dict(patch_size=8, embed_dim=512, depth=12, num_heads=8, mlp_ratio=5, mask_ratio=0.0)),
    "cvlface_vit_b": (InsightfaceViT, dict(patch_size=8, embed_dim=512, depth=24, num_heads=16, mlp_ratio=3, mask_ratio=0.0)),
    "insightface_vit_t": (InsightfaceViT, dict(patch_size=9, embed_dim=256, depth=12, num_heads=8)),
    "insightface_vit_s": (InsightfaceViT, dict(patch_size=9, embed_dim=512, depth=12, num_heads=8)),
    "insightface_vit_b": (InsightfaceViT, dict(patch_size=9, embed_dim=512, depth=24, num_heads=8)),
    "vitfiqa_token": (QualityTokenViT, dict(mode="token")),
    "vitfiqa_crfiqa": (QualityTokenViT, dict(mode="crfiqa")),
    "vitfiqa_full": (QualityTokenViT, dict(mode="full")),
}
LAYOUTS = {  # how official checkpoints nest and prefix the weights
    "training": lambda sd: {"state_dict_backbone": {"module." + k: v for k, v in sd.items()}, "epoch": 3},
    "cvlface": lambda sd: {"model": {"net." + k: v for k, v in sd.items()}},
    "plain": lambda sd: dict(sd),
}


@pytest.mark.parametrize("name", list(OFFICIAL_CONFIGS))
def test_official_checkpoint_fits_its_preset(name):
    cls, cfg = OFFICIAL_CONFIGS[name]
    with torch.device("meta"):  # full-size shapes without memory
        official_sd = cls(**cfg).state_dict()
        for layout, wrap in LAYOUTS.items():
            model, rep = load_official_state_dict(preset(name), wrap(official_sd), report=True)
            assert rep.dropped == (["mask_token"] if "mask_token" in official_sd else [])
            assert rep.renamed == ({"qs_token": "quality_token"} if "qs_token" in official_sd else {})
        assert model.blocks[0].attn.num_heads == cfg.get("num_heads", 8)
        wrong = "cvlface_vit_s" if name != "cvlface_vit_s" else "cvlface_vit_b"
        with pytest.raises(ValueError, match=f"fit preset '{name}'"):
            load_official_state_dict(preset(wrong), official_sd)


def test_wrong_head_count_is_warned():
    with torch.device("meta"):
        official_sd = InsightfaceViT(**OFFICIAL_CONFIGS["cvlface_vit_b"][1]).state_dict()
        with pytest.warns(UserWarning, match=r"preset 'cvlface_vit_b' with \[16\] attention heads, but the model has 8"):
            load_official_state_dict(face_vit("vit_b", patch_size=8, mlp_ratio=3), official_sd)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_official_state_dict("cvlface_vit_b", official_sd)


@pytest.mark.parametrize("name", [n for n in STRUCTURES if n in PRESETS])
def test_small_official_weights_give_the_same_outputs_through_presets(name, official):
    eager = official[f"{name}-script"][0]
    small = dict(embed_dim=eager.embed_dim, depth=len(eager.blocks), num_heads=eager.blocks[0].attn.num_heads,
                 num_features=eager.feature[-1].num_features)
    ours = load_official_state_dict(preset(name, **small), {"state_dict_backbone": eager.state_dict()})
    x = images(2, seed=4)
    with torch.no_grad():
        want, got = eager(x), ours(x)
    for w, g in zip(want if isinstance(want, tuple) else [want], got if isinstance(got, tuple) else [got]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_checkpoint_layout_errors():
    model = preset("vitfiqa_token", embed_dim=16, depth=1, num_heads=2, num_features=16)
    with pytest.raises(ValueError, match="non-tensor entries"):
        load_official_state_dict(model, {"epoch": 3, "optimizer": {}})
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(10, 16)  # a classifier saved beside the backbone: never loaded into it
    with pytest.raises(ValueError, match=r"unexpected \['fc.weight'.*fit none of the presets"):
        load_official_state_dict(model, sd)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("vit_huge")
