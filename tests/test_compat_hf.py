"""Compatibility with the Hugging Face zoo (the `compat` extra): random-weight transformers models, exported
as users export them, scored by vitfiqa and compared with an eager reference (tests/models/hf_zoo.py), or refused
with a reason when they are not plain ViTs. The README's compatibility table is written from the same checks
(`python -m tests.models.hf_zoo --readme README.md`)."""
import pytest

pytest.importorskip("transformers")

from .models.hf_zoo import cases, check  # noqa: E402

CASES = cases()


@pytest.mark.parametrize("family, impl, how", CASES, ids=[f"{f.name}-{impl}-{how}" for f, impl, how in CASES])
def test_hf_model(family, impl, how):
    row = check(family, impl, how)  # raises on any score that differs from the reference
    if row["status"] == "not offered":  # transformers has no such attention for this family
        assert impl == "sdpa", row
    elif row["status"] == "not exportable":  # transformers models are not scriptable
        assert how == "script", row
    elif family.plain:
        assert row["status"] == "ok" and {"attn", "vitnt"} <= set(row["works"]), row
        assert ("attn full" in row["works"]) == family.biased
    else:
        assert row["status"].startswith("refused") and row["why"].startswith("not a plain ViT"), row
