"""The graph capture itself: what it finds, one forward pass, early exits that really stop."""
import warnings

import pytest
import torch

import vitfiqa
from vitfiqa.models import FaceViT


def test_info_describes_model(model_cases, loaded):
    info = loaded("timm-script").info
    assert info["num_blocks"] == 4
    assert info["attention_kind"] == "scaled_dot_product_attention"
    assert info["has_final_norm"] and info["has_hierarchy"]
    info = loaded("insightface-trace").info
    assert info["attention_kind"] == "softmax" and info["num_blocks"] == 3
    assert loaded("vitfiqa_token-script").info["num_outputs"] == 2


class CountingViT(FaceViT):
    """Counts its own forward passes in a buffer (a side effect the rewritten graph must keep)."""

    def __init__(self):
        super().__init__(embed_dim=32, depth=2, num_heads=4, num_features=16)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls.add_(1)
        return self.feature(self.forward_tokens(x).flatten(1))


def test_one_forward_pass_per_batch(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(CountingViT().eval()).save(str(tmp_path / "count.pt"))
    m = vitfiqa.load(tmp_path / "count.pt")
    x = torch.randn(6, 3, 112, 112)
    m.score(x, methods=["attn", "vitnt"], heatmaps=True, vitnt_weighting="attention")
    assert m._core.attribute("calls").item() == 1
    m.score(x, methods=["attn", "vitnt"], batch_size=2)
    assert m._core.attribute("calls").item() == 1 + 3


def test_only_needed_blocks_are_computed(loaded):
    m = loaded("timm-script")
    # ATTN-FIQA on block 1 needs only blocks 0..1 (q, k of block 1): later blocks are dead code.
    g = m.graph(logits_blocks=[1])
    assert g.count("aten::scaled_dot_product_attention") == 1
    full = m.graph(logits_blocks=[3], token_blocks=[0, 1, 2])
    assert full.count("aten::scaled_dot_product_attention") == 3  # the last block stops at q, k


def test_early_exit_graph_stops_at_exit(loaded):
    m = loaded("vitfiqa_token-script")
    g = m.graph(exit_blocks=[1])
    assert g.count("aten::softmax") == 2  # blocks 0 and 1 only
    r1 = m.score(torch.randn(2, 3, 112, 112), methods=["exfiqa"], exits=[1])
    assert r1.exits.shape == (1, 2)


def test_frozen_model_attn_works_vitnt_rejected(tmp_path, model_cases):
    c = model_cases["insightface-script"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.script(c.eager))
        frozen.save(str(tmp_path / "frozen.pt"))
    m = vitfiqa.load(tmp_path / "frozen.pt")
    x = c.images(2)
    ref_scores = vitfiqa.load(c.path).score(x, methods=["attn"]).scores["attn"]
    torch.testing.assert_close(m.score(x, methods=["attn"]).scores["attn"], ref_scores, rtol=1e-5, atol=0)
    if not m.info["has_hierarchy"]:
        with pytest.raises(ValueError, match="block outputs cannot be located"):
            m.score(x, methods=["vitnt"])


def test_model_output_unchanged_by_capture(model_cases, loaded):
    c = model_cases["vitfiqa_token-trace"]
    x = c.images(2)
    m = loaded("vitfiqa_token-trace")
    emb, q = m.forward(x)
    cap = m.capture(x, attention_blocks=[-1], token_blocks=[0], model_output=True)
    emb2, q2 = cap["model_output"]
    torch.testing.assert_close(emb2, emb, rtol=0, atol=0)
    with torch.no_grad():
        e_emb, e_q = c.eager(x)
    torch.testing.assert_close(emb, e_emb, rtol=1e-5, atol=1e-6)
    assert cap["patch_grid"] == [12, 12]
    assert cap["block_tokens"][0].shape == (2, 145, 48)


@pytest.mark.parametrize("case", ["timm-script", "insightface-trace", "vitfiqa_token-script"])
def test_tokens_and_distances_on_different_blocks_are_independent(case, model_cases):
    """One request's parts do not interfere: whole tokens of some blocks and ViTNT-FIQA's step distances over
    other blocks, in one pass, each equal its own request and the reference (final_norm=False for the tokens
    leaves the distances, which always read final-norm tokens, unchanged)."""
    from .reference import methods as ref

    c = model_cases[case]
    m = vitfiqa.load(c.path, image_size=(c.image_size, c.image_size))
    x = c.images(2)
    distance_blocks = [0, 2, 3] if m.num_blocks == 4 else [0, 2]
    for final_norm in (True, False):
        both = m.capture(x, token_blocks=[1], final_norm=final_norm, distance_blocks=distance_blocks)
        tokens = m.capture(x, token_blocks=[1], final_norm=final_norm)
        distances = m.capture(x, distance_blocks=distance_blocks)
        assert list(both["block_tokens"]) == [1] and tokens["token_distances"] == []
        assert list(distances["block_tokens"]) == [] and len(both["token_distances"]) == len(distance_blocks) - 1
        torch.testing.assert_close(both["block_tokens"][1], tokens["block_tokens"][1], rtol=0, atol=0)
        for got, alone in zip(both["token_distances"], distances["token_distances"]):
            torch.testing.assert_close(got, alone, rtol=0, atol=0)
        _, outs, _ = ref.run(c.eager, x)
        with torch.no_grad():
            want_tokens = c.eager.norm(outs[1]) if final_norm else outs[1]
        torch.testing.assert_close(both["block_tokens"][1], want_tokens, rtol=1e-5, atol=1e-5)
        for got, want in zip(both["token_distances"], ref.step_distances(outs, c.eager.norm, distance_blocks)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_load_from_bytes(model_cases):
    c = model_cases["timm-trace"]
    data = open(c.path, "rb").read()
    m = vitfiqa.load(data, image_size=(32, 32))
    x = c.images(2)
    torch.testing.assert_close(m.score(x, methods=["attn"]).scores["attn"],
                               vitfiqa.load(c.path).score(x, methods=["attn"]).scores["attn"], rtol=0, atol=0)


class AssigningViT(FaceViT):
    """Assigns a module attribute in forward (prim::SetAttr), which turns parameter hoisting off."""

    def __init__(self):
        super().__init__(embed_dim=32, depth=3, num_heads=4, num_features=16)
        self.calls: int = 0

    def forward(self, x):
        self.calls = self.calls + 1
        return self.feature(self.forward_tokens(x).flatten(1))


def test_vitnt_without_hoisting_matches_reference(tmp_path):
    from .reference import methods as ref

    torch.manual_seed(3)
    model = AssigningViT().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(tmp_path / "assign.pt"))
    x = torch.randn(2, 3, 112, 112)
    r = vitfiqa.load(tmp_path / "assign.pt").score(x, methods=["vitnt", "attn"])
    torch.testing.assert_close(r.scores["vitnt"], ref.vitnt_fiqa(model, x, 0)[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("case,variants", [
    # biased attention: attn_logits selects q.k*scale or the whole softmax input
    ("timm_relpos-script", [{"attn_logits": "qk"}, {"attn_logits": "full"}]),
    # two outputs: exit_output selects which one the exits compute
    ("vitfiqa_token-script", [{"exit_blocks": [1], "exit_output": 0}, {"exit_blocks": [1], "exit_output": 1}]),
    ("vitfiqa_token-script", [{"final_norm": True}, {"final_norm": False}]),
    ("vitfiqa_token-script", [{"model_output": False}, {"model_output": True}, {"probs_blocks": [0]}]),
])
def test_graph_cache_tells_requests_apart(case, variants, model_cases):
    """The rewritten graphs are cached per request, keyed by the whole request: requests that differ in one field,
    run one after another on one model, each get their own graph (the results of a freshly loaded model)."""
    c = model_cases[case]
    x = c.images(2)
    common = {"attention_blocks": [1], "token_blocks": [0, 1]}

    def load():
        return vitfiqa.load(c.path, image_size=(c.image_size, c.image_size))

    def tensors(cap):
        out = []
        for key in ("attention_logits", "attention_probs", "block_tokens", "exits"):
            out += [(key, b, t) for b, t in sorted(cap[key].items())]
        return out + [("model_output", i, t) for i, t in enumerate(cap["model_output"] or ())]

    shared = load()
    results = []
    for request in variants + variants[::-1]:  # every request again after the others have been cached
        got = tensors(shared.capture(x, **common, **request))
        want = tensors(load().capture(x, **common, **request))
        assert [k[:2] for k in got] == [k[:2] for k in want]
        for (key, b, g), (_, _, w) in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0, msg=f"{request}: {key}[{b}]")
        results.append(got)
    for first, second in zip(results, results[1:len(variants)]):  # and the variants differ from each other
        assert len(first) != len(second) or any(not torch.equal(a[2], b[2]) for a, b in zip(first, second))
