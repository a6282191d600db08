"""C++ scores against the independent reference (tests/reference) for every family, scripted and traced."""
import pytest
import torch

import vitfiqa

from .models.cases import FAMILIES
from .tolerances import assert_batch_close
from .reference import methods as ref

RTOL = 1e-5
CASES = [f"{f}-{how}" for f in FAMILIES for how in ("script", "trace")]
QUALITY_CASES = [c for c in CASES if FAMILIES[c.rsplit("-", 1)[0]][4]]


def close(actual, expected, rtol=RTOL):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_attn_fiqa_matches_reference(case, model_cases, loaded):
    c = model_cases[case]
    x = c.images()
    r = loaded(case).score(x, methods=["attn"])
    expected = ref.attn_fiqa(c.eager, x)
    assert (expected.abs() > 1e-3).all(), "test model too degenerate for a relative comparison"
    close(r.scores["attn"], expected)


@pytest.mark.parametrize("case", CASES)
def test_attn_patch_tokens_and_inner_block(case, model_cases, loaded):
    c = model_cases[case]
    x = c.images(2, seed=5)
    r = loaded(case).score(x, methods=["attn"], attn_tokens="patches", attn_block=1)
    close(r.scores["attn"], ref.attn_fiqa(c.eager, x, block=1, first_token=c.prefix))


@pytest.mark.parametrize("case", CASES)
def test_attn_heatmap_matches_reference(case, model_cases, loaded):
    c = model_cases[case]
    x = c.images(2)
    r = loaded(case).score(x, methods=["attn"], heatmaps=True)
    hm = r.heatmaps["attn"]
    assert hm.shape == (2, c.image_size, c.image_size)
    assert hm.min() >= 0 and hm.max() <= 1 + 1e-6
    torch.testing.assert_close(hm, ref.attn_heatmap(c.eager, x, c.prefix, c.grid), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("weighting", ["uniform", "attention"])
def test_vitnt_fiqa_matches_reference(case, weighting, model_cases, loaded):
    c = model_cases[case]
    x = c.images()
    r = loaded(case).score(x, methods=["vitnt"], vitnt_weighting=weighting, return_captures=True)
    expected, q = ref.vitnt_fiqa(c.eager, x, c.prefix, weighting=weighting)
    close(r.scores["vitnt"], expected)
    close(r.captures["vitnt_patch_quality"], q, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_vitnt_block_selection_and_scale(case, model_cases, loaded):
    c = model_cases[case]
    x = c.images(2, seed=3)
    r = loaded(case).score(x, methods=["vitnt"], vitnt_blocks=[0, 2], vitnt_scale=3.0)
    expected, _ = ref.vitnt_fiqa(c.eager, x, c.prefix, blocks=[0, 2], s=3.0)
    close(r.scores["vitnt"], expected)


@pytest.mark.parametrize("case", QUALITY_CASES)
def test_vitfiqa_and_exfiqa_match_reference(case, model_cases, loaded):
    c = model_cases[case]
    x = c.images(4)
    m = loaded(case)
    r = m.score(x, methods=["vitfiqa", "exfiqa"])
    close(r.scores["vitfiqa"], ref.vitfiqa(c.eager, x))
    exits = ref.exit_scores(c.eager, x, c.variant)
    close(r.exits, exits)
    depths = list(range(1, m.num_blocks + 1))
    assert r.exit_depths == depths
    close(r.scores["exfiqa_F"], ref.fuse(exits, depths, "mean"))
    close(r.scores["exfiqa_FW"], ref.fuse(exits, depths, "depth"))
    for norm in ("zscore", "minmax"):
        rn = m.score(x, methods=["exfiqa"], exit_normalization=norm)
        close(rn.scores["exfiqa_FW"], ref.fuse(exits, depths, "depth", norm))
        close(vitfiqa.fuse_exits(r.exits, depths, "mean", norm), ref.fuse(exits, depths, "mean", norm))


@pytest.mark.parametrize("case", QUALITY_CASES)
def test_exit_subset(case, model_cases, loaded):
    c = model_cases[case]
    x = c.images(3)
    r = loaded(case).score(x, methods=["exfiqa"], exits=[0, 2])
    exits = ref.exit_scores(c.eager, x, c.variant)[[0, 2]]
    assert r.exit_depths == [1, 3]
    close(r.exits, exits)
    close(r.scores["exfiqa_FW"], ref.fuse(exits, [1, 3], "depth"))


@pytest.mark.parametrize("case", ["insightface-script", "timm-trace"])
def test_raw_logits_and_qk_mean_identity(case, model_cases, loaded):
    """Fused attention scores use mean(q).mean(k); check it against the materialised logits."""
    c = model_cases[case]
    x = c.images(2)
    m = loaded(case)
    r = m.score(x, methods=["attn"], return_captures=True)
    last = m.num_blocks - 1
    lg = r.captures[f"attention_logits.{last}"]
    assert lg.shape[-1] == lg.shape[-2] == c.grid[0] * c.grid[1] + c.prefix
    close(lg.double().mean(dim=(1, 2, 3)), r.scores["attn"])
    _, _, inputs = ref.run(c.eager, x)
    torch.testing.assert_close(lg.double(), ref.logits(c.eager, inputs[-1], last), rtol=1e-4, atol=1e-5)


def test_batch_size_split_gives_same_scores(model_cases, loaded):
    c = model_cases["timm-script"]
    x = c.images(7)
    m = loaded("timm-script")
    whole = m.score(x, methods=["attn", "vitnt"])
    split = m.score(x, methods=["attn", "vitnt"], batch_size=3)
    for k in whole.scores:  # float32 GEMMs block by batch size: equal within the float32 bound, not bitwise
        assert_batch_close(split.scores[k], whole.scores[k], c.eager, k)
    assert len(split) == 7
    df = split.to_frame()
    assert list(df.columns) == ["index", "path", "attn", "vitnt"] and len(df) == 7
    assert df["path"].tolist() == [f"<image #{i}>" for i in range(7)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype, model_cases):
    c = model_cases["insightface-script"]
    x = c.images(2)
    m = vitfiqa.load(c.path, dtype=dtype)
    assert m.info["dtype"] in ("BFloat16", "Half")
    r = m.score(x, methods=["attn", "vitnt"])
    for k in ("attn", "vitnt"):
        assert torch.isfinite(r.scores[k]).all()
    # Half-precision logits carry ~3 significant digits: compare on the scale of the logits themselves.
    _, _, inputs = ref.run(c.eager, x)
    logit_scale = ref.logits(c.eager, inputs[-1], -1 % c.eager.blocks.__len__()).abs().mean().item()
    torch.testing.assert_close(r.scores["attn"], ref.attn_fiqa(c.eager, x), rtol=0, atol=0.02 * logit_scale)
    torch.testing.assert_close(r.scores["vitnt"], ref.vitnt_fiqa(c.eager, x, c.prefix)[0], rtol=0.05, atol=0)


def test_uint8_images_are_preprocessed(model_cases):
    import numpy as np

    c = model_cases["insightface-script"]
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 112, 112, 3), dtype=np.uint8)
    m = vitfiqa.load(c.path)
    r = m.score(list(imgs), methods=["attn"])
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    close(r.scores["attn"], ref.attn_fiqa(c.eager, x))
    # Larger images are resized to 112x112 first.
    big = rng.integers(0, 256, size=(150, 130, 3), dtype=np.uint8)
    assert m.score(big, methods=["attn"]).scores["attn"].shape == (1,)
