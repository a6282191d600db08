"""One registry of quality sources: the baselines registered here and the ViT methods of the C++ core
(``_core.methods()``). :func:`source_of` answers which source computes a score column, for both."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class BaselineMethod:
    """A baseline: ``compute(model, x, **options)`` maps a :class:`vitfiqa.baselines.BaselineModel` and a prepared
    batch to ``{column: float64 tensor [B]}`` (higher = better for every column). ``options`` are its keyword
    options with their defaults; ``default_preset`` the network its paper uses; ``accepts`` says on which networks
    it runs."""

    name: str
    title: str
    columns: tuple[tuple[str, str], ...]      # (column, display label)
    compute: Callable[..., dict]
    options: Mapping[str, Any] = field(default_factory=dict)
    default_preset: str | None = None
    accepts: str = ""
    description: str = ""

    def check_options(self, options: Mapping[str, Any]) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"{self.name}: unknown option(s) {unknown}; its options: {known}")
        return {**self.options, **{k: v for k, v in options.items() if v is not None}}


REGISTRY: dict[str, BaselineMethod] = {}


def register(method: BaselineMethod) -> BaselineMethod:
    from ..config import methods as vit_methods, score_columns as vit_columns

    others = [m for m in REGISTRY.values() if m.name != method.name]
    taken = set(vit_methods()) | set(vit_columns()) | {m.name for m in others} | {c for m in others for c, _ in m.columns}
    clash = ({method.name} | {c for c, _ in method.columns}) & taken
    if clash:
        raise ValueError(f"baseline {method.name!r}: names {sorted(clash)} are taken by another quality source")
    REGISTRY[method.name] = method
    return method


def methods() -> tuple[str, ...]:
    """The baselines' names, in registration order."""
    return tuple(REGISTRY)


def score_columns() -> dict[str, str]:
    """Each column a baseline writes -> that baseline."""
    return {c: m.name for m in REGISTRY.values() for c, _ in m.columns}


def source_of(column: str) -> tuple[str, str]:
    """Which source computes score column (or method name) ``column``: ``("vit", method)`` for the C++ core's ViT
    methods (``attn``, ``exfiqa_FW`` -> ``exfiqa``, ...), ``("baseline", method)`` for the baselines
    (``serfiq_released`` -> ``serfiq``); a clear error for anything else."""
    from ..config import methods as vit_methods, score_columns as vit_columns

    vit = {**{m: m for m in vit_methods()}, **vit_columns()}
    if column in vit:
        return "vit", vit[column]
    base = {**{m: m for m in REGISTRY}, **score_columns()}
    if column in base:
        return "baseline", base[column]
    raise ValueError(f"unknown method or score column {column!r}; ViT methods: {sorted(vit)}; "
                     f"baselines: {sorted(base)}")


def all_columns() -> dict[str, tuple[str, str]]:
    """Every score column (and method name) of both registries -> (kind, method)."""
    from ..config import methods as vit_methods, score_columns as vit_columns

    out = {m: ("vit", m) for m in vit_methods()}
    out.update({c: ("vit", m) for c, m in vit_columns().items()})
    out.update({m: ("baseline", m) for m in REGISTRY})
    out.update({c: ("baseline", m) for c, m in score_columns().items()})
    return out


def display_name(column: str) -> str:
    """The paper's name of a baseline column (``serfiq_released`` -> ``SER-FIQ (released)``), else the ViT
    registry's (:func:`vitfiqa.config.display_name`)."""
    for m in REGISTRY.values():
        if column == m.name:
            return m.title
        for c, label in m.columns:
            if c == column:
                return label
    from ..config import display_name as vit_display

    return vit_display(column)
