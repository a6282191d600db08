"""The scoring configuration.

:class:`ScoreConfig` is the C++ core's own class (``csrc/config.h``), so the field names, types, defaults
and docs are written once, there: ``ScoreConfig.fields()`` lists them. Fields are top-level (``methods``,
``heatmaps``, ``return_captures``, ``prefix_tokens``, ``grid``, ``quality_output``) or in per-method
sections (``attn.block``, ``vitnt.blocks``, ``exfiqa.exits``, ``heatmap.normalize``, ...)::

    cfg = ScoreConfig(methods=["attn", "vitnt"], vitnt={"blocks": [0, 5, 11]})
    cfg.attn.block = -2
    cfg.set("vitnt.blocks", "0:20")          # strings are parsed as the CLI's --set does
    ScoreConfig.from_dict(cfg.to_dict()) == cfg

A config is validated against the model once, before the first batch; options of methods that are not
requested are ignored. The method list comes from the core's registry (:func:`methods`).
"""
from __future__ import annotations

from typing import Any, Mapping

from . import _core

ScoreConfig = _core.ScoreConfig

# QualityModel.score's keyword options -> config fields: the keyword column of the core's field table.
_KEYWORD_FIELDS = {f["keyword"]: f["name"] for f in ScoreConfig.fields()}


def methods() -> tuple[str, ...]:
    """Names of the quality methods the core registers."""
    return tuple(m["name"] for m in _core.methods())


def method_descriptions() -> dict[str, str]:
    return {m["name"]: m["description"] for m in _core.methods()}


def score_config(config: ScoreConfig | Mapping | None = None, **options: Any) -> ScoreConfig:
    """A new config: ``config`` (a ScoreConfig, a nested or dotted dict, or None for the defaults) with
    :meth:`vitfiqa.QualityModel.score`'s keyword options applied on top. The one rule: each keyword names one
    field (``attn_block`` -> ``attn.block``, ``exits`` -> ``exfiqa.exits``: the ``keyword`` column of
    ``ScoreConfig.fields()``); a keyword given as None is left out (the field keeps its value)."""
    if config is None:
        cfg = ScoreConfig()
    elif isinstance(config, ScoreConfig):
        cfg = config.copy()
    elif isinstance(config, Mapping):
        cfg = ScoreConfig.from_dict(dict(config))
    else:
        raise TypeError(f"config must be a vitfiqa.ScoreConfig or a dict, got {type(config).__name__}")
    for key, value in options.items():
        name = _KEYWORD_FIELDS.get(key)
        if name is None:
            raise TypeError(f"unknown scoring option {key!r}; options: {', '.join(sorted(_KEYWORD_FIELDS))}")
        if value is None:
            continue
        if not isinstance(value, (str, list, tuple, bool, int, float)) and hasattr(value, "__iter__"):
            value = list(value)  # generators, sets of methods, numpy arrays of blocks
        cfg.set(name, value)
    return cfg


def check_batch_independent(config: ScoreConfig) -> None:
    """Refuse a config under which an image's score would depend on which images share its batch (the
    methods say when: e.g. EX-FIQA's normalisation over the batch)."""
    why = _core.batch_dependence(config)
    if why:
        raise ValueError(why)


__all__ = ["ScoreConfig", "methods", "method_descriptions", "score_config", "check_batch_independent"]
