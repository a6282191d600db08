"""The one home of the test models: small random-weight networks made here (nothing is downloaded).

- :mod:`.cases`: the model families every method test runs on (:data:`FAMILIES`, exported scripted and traced by
  the ``model_cases`` fixture in ``tests/conftest.py``), ``spread`` and ``export``.
- :mod:`.timm_style`: a timm-style ViT (CLS token, fused attention, relative-position bias, attention masks).
- :mod:`.official`: the papers' official model classes, written from their published layouts.
- :mod:`.hf_zoo`: the Hugging Face zoo of the compatibility suite (``python -m tests.models.hf_zoo``).

``tests/reference`` stays the independent truth of the methods' math; the models live here.
"""
