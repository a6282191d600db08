"""The scoring configuration.

:class:`ScoreConfig` is the C++ core's own class (``csrc/config.h``), so the field names, types, defaults
and docs are written once, there (each method's section in its own file, ``csrc/methods/<name>.cpp``):
``ScoreConfig.fields()`` lists them; each field is an attribute (``vitfiqa/_core.pyi`` types them). Fields are top-level (``methods``,
``heatmaps``, ``return_captures``, ``prefix_tokens``, ``grid``, ``quality_output``) or in per-method
sections (``attn.block``, ``vitnt.blocks``, ``exfiqa.exits``, ``heatmap.normalize``, ...)::

    cfg = ScoreConfig(methods=["attn", "vitnt"], vitnt={"blocks": [0, 5, 11]})
    cfg.attn.block = -2
    cfg.set("vitnt.blocks", "0:20")          # strings are parsed as the CLI's --set does
    ScoreConfig.from_dict(cfg.to_dict()) == cfg

A config is validated against the model once, before the first batch; options of methods that are not
requested are ignored. The method list, each method's score columns and their display names come from the
core's registry (:func:`methods`, :func:`score_columns`, :func:`display_name`).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

from . import _core

ScoreConfig = _core.ScoreConfig
_REGISTRY = tuple(_core.methods())  # the core's registered methods (csrc/methods/), in its order (by name)

# QualityModel.score's keyword options: a top-level field by its name (methods=, heatmaps=, ...) or a section
# as a dict of its fields (attn={"block": -2}). The flat keywords of the core's field table (attn_block=, the
# ``keyword`` column) are the old spelling, kept for one release with a DeprecationWarning.
_FIELD_NAMES = [f["name"] for f in ScoreConfig.fields()]
_TOP_LEVEL = {n for n in _FIELD_NAMES if "." not in n}
_SECTIONS = {n.split(".", 1)[0] for n in _FIELD_NAMES if "." in n}
_OLD_KEYWORDS = {f["keyword"]: f["name"] for f in ScoreConfig.fields() if f["keyword"] != f["name"]}


def methods() -> tuple[str, ...]:
    """Names of the quality methods the core registers."""
    return tuple(m["name"] for m in _REGISTRY)


def score_columns() -> dict[str, str]:
    """Each score column a method writes whatever the model (``attn``, ..., ``exfiqa_F``, ``exfiqa_FW``; not
    EX-FIQA's per-exit columns, which depend on the model: :meth:`vitfiqa.QualityModel.columns`) -> that
    method, in the registry's order."""
    return {column: m["name"] for m in _REGISTRY for column, _ in m["score_columns"]}


def display_name(name: str) -> str:
    """How tables and plots name a method or score column: its paper's name (``vitnt`` -> ``ViTNT-FIQA``,
    ``exfiqa_FW`` -> ``EX-FIQA (FW)``), as its method file registers it; any other name (a user's label for a
    quality source, an exit column) is returned unchanged."""
    for m in _REGISTRY:
        if name == m["name"]:
            return m["title"]
        for column, label in m["score_columns"]:
            if name == column:
                return label
    return name


def score_config(config: ScoreConfig | Mapping | None = None, **options: Any) -> ScoreConfig:
    """A new config: ``config`` (a ScoreConfig, a nested or dotted dict such as ``{"vitnt.blocks": [0, 5]}``,
    or None for the defaults) with :meth:`vitfiqa.QualityModel.score`'s keyword options applied on top: a
    top-level field by its name (``methods=``, ``heatmaps=``, ``prefix_tokens=``, ...) or a section as a dict
    of its fields (``attn={"block": -2}``, ``vitnt={"blocks": [0, 5], "scale": 8.0}``). A value given as None
    is left out (the field keeps its value). The old flat keywords (``attn_block=``, ``exits=``: the
    ``keyword`` column of ``ScoreConfig.fields()``) still work for one release, with a DeprecationWarning."""
    if config is None:
        cfg = ScoreConfig()
    elif isinstance(config, ScoreConfig):
        cfg = config.copy()
    elif isinstance(config, Mapping):
        cfg = ScoreConfig.from_dict(dict(config))
    else:
        raise TypeError(f"config must be a vitfiqa.ScoreConfig or a dict, got {type(config).__name__}")
    for key, value in options.items():
        if key in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise TypeError(f"{key}= takes a dict of the {key} section's fields (e.g. {key}={{'field': value}}), "
                                f"got {type(value).__name__}")
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v)
            continue
        name = key if key in _TOP_LEVEL else _OLD_KEYWORDS.get(key)
        if name is None:
            raise TypeError(f"unknown scoring option {key!r}; options: {', '.join(sorted(_TOP_LEVEL | _SECTIONS))} "
                            "(a section takes a dict of its fields)")
        if name != key:
            section, field = name.split(".", 1)
            warnings.warn(f"{key}= is deprecated: pass {section}={{'{field}': ...}} (or config={{'{name}': ...}})",
                          DeprecationWarning, stacklevel=3)
        if value is not None:
            _set(cfg, name, value)
    return cfg


def _set(cfg: ScoreConfig, name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (str, list, tuple, bool, int, float)) and hasattr(value, "__iter__"):
        value = list(value)  # generators, sets of methods, numpy arrays of blocks
    cfg.set(name, value)


def check_batch_independent(config: ScoreConfig) -> None:
    """Refuse a config under which an image's score would depend on which images share its batch (the
    methods say when: e.g. EX-FIQA's normalisation over the batch)."""
    why = _core.batch_dependence(config)
    if why:
        raise ValueError(why)


__all__ = ["ScoreConfig", "methods", "score_columns", "display_name", "score_config",
           "check_batch_independent"]
