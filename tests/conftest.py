"""Session fixtures: the test models of tests/models/cases.py exported once, scripted and traced."""
from __future__ import annotations

import pytest
import torch

from .models.cases import FAMILIES, ModelCase, export, spread  # noqa: F401  (the one home of the test models)


@pytest.fixture(scope="session")
def model_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cases = {}
    for i, (name, (factory, size, prefix, grid, variant)) in enumerate(FAMILIES.items()):
        torch.manual_seed(i)
        eager = spread(factory(), seed=i)
        example = torch.randn(2, 3, size, size)
        for how in ("script", "trace"):
            path = export(eager, how, example, str(root / f"{name}_{how}.pt"))
            cases[f"{name}-{how}"] = ModelCase(f"{name}-{how}", eager, path, size, prefix, grid, variant)
    return cases


@pytest.fixture(scope="session")
def loaded(model_cases):
    import vitfiqa

    cache = {}

    def get(key):
        if key not in cache:
            c = model_cases[key]
            cache[key] = vitfiqa.load(c.path, vitfiqa.ModelOptions(image_size=(c.image_size, c.image_size)))
        return cache[key]

    return get
