"""Writes ``vitfiqa/_core.pyi``, the type stub of the C++ core, from the core itself: the ScoreConfig fields and
sections from its field table (``ScoreConfig.fields()``), everything else from the signatures pybind11 writes into
the bindings' docstrings. ``python -m vitfiqa._stubgen`` rewrites the file; ``--check`` fails when it is stale
(tests/test_stubs.py runs the check).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

STUB = Path(__file__).with_name("_core.pyi")

# Field table types -> Python types.
FIELD_TYPES = {"bool": "bool", "int": "int", "float": "float", "str": "str", "list[int]": "list[int]",
               "list[float]": "list[float]", "list[str]": "list[str]"}

# Where pybind11 can only say `dict`, `list` or `object`: the precise types (what the bindings build).
RETURNS = {
    "methods": "list[dict[str, typing.Any]]",
    "ScoreConfig.fields": "list[dict[str, typing.Any]]",
    "ScoreConfig.to_dict": "dict[str, typing.Any]",
    "ScoreConfig.get": "typing.Any",
    "CaptureModel.info": "dict[str, typing.Any]",
    "CaptureModel.capture": "dict[str, typing.Any]",
    "ScoreResult.scores": "dict[str, torch.Tensor]",
    "ScoreResult.heatmaps": "dict[str, torch.Tensor]",
    "ScoreResult.heatmap_grids": "dict[str, torch.Tensor]",
    "ScoreResult.captures": "dict[str, torch.Tensor]",
    "ScoreResult.exits": "torch.Tensor | None",
}
PARAMS = {  # (function, parameter) -> type
    ("ScoreConfig.__init__", "**kwargs"): "typing.Any",
    ("ScoreConfig.from_dict", "data"): "typing.Mapping[str, typing.Any]",
    ("ScoreConfig.update", "data"): "typing.Mapping[str, typing.Any]",
}


def _split_top_level(text: str) -> list[str]:
    """Splits a parameter list at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


# pybind11's spellings (they vary between its versions) -> the plain ones, so the stub depends on the bindings only.
SPELLINGS = [
    (r"typing\.SupportsInt \| typing\.SupportsIndex", "int"),
    (r"typing\.SupportsFloat \| typing\.SupportsIndex", "float"),
    (r"typing\.SupportsInt\b", "int"),
    (r"typing\.SupportsFloat\b", "float"),
    (r"\b(?:typing\.)?List\[", "list["),
    (r"\b(?:typing\.)?Dict\[", "dict["),
    (r"\b(?:typing\.)?Tuple\[", "tuple["),
    (r"\b(?:typing\.)?Sequence\[", "collections.abc.Sequence["),
    (r"\bcollections\.abc\.collections\.abc\.", "collections.abc."),
]


def _clean(type_text: str) -> str:
    t = type_text.replace("vitfiqa._core.", "").strip()
    for pattern, plain in SPELLINGS:
        t = re.sub(pattern, plain, t)
    return "typing.Any" if t == "object" else t


def _signature(doc: str | None, name: str, qualname: str, kind: str) -> list[str]:
    """The stub lines of one pybind11 function from its docstring's first line ``name(a: T = d, ...) -> R``."""
    first = (doc or "").splitlines()[0] if doc else ""
    m = re.match(r"^\w*\((.*)\)\s*->\s*(.+)$", first)
    if not m:
        raise ValueError(f"no pybind11 signature for {qualname}: {first!r}")
    params = []
    for i, p in enumerate(_split_top_level(m.group(1))):
        if p in ("*", "/"):
            params.append(p)
            continue
        pname, _, rest = p.partition(":")
        pname = pname.strip()
        if kind == "method" and i == 0:
            params.append("self")
            continue
        annotation, _, default = rest.partition("=")
        annotation = PARAMS.get((qualname, pname), _clean(annotation)) if annotation else \
            PARAMS.get((qualname, pname), "typing.Any")
        params.append(f"{pname}: {annotation}" + (" = ..." if default.strip() else ""))
    returns = RETURNS.get(qualname, _clean(m.group(2)))
    doc_rest = "\n".join((doc or "").splitlines()[2:]).strip()
    lines = ["@staticmethod"] if kind == "static" else []
    body = f'\n    """{doc_rest}"""' if doc_rest else " ..."
    lines.append(f"def {name}({', '.join(params)}) -> {returns}:{body}")
    return lines


def _property(cls: type, name: str, prop: property) -> list[str]:
    qualname = f"{cls.__name__}.{name}"
    doc = prop.fget.__doc__ if prop.fget else None
    m = re.match(r"^\(.*\)\s*->\s*(.+)$", (doc or "").splitlines()[0] if doc else "")
    returns = RETURNS.get(qualname, _clean(m.group(1)) if m else "typing.Any")
    if prop.fset is not None:
        return [f"{name}: {returns}"]
    return ["@property", f"def {name}(self) -> {returns}: ..."]


def _class(cls: type, skip: frozenset[str] | set[str] = frozenset(), extra: list[str] | None = None) -> list[str]:
    lines = [f"class {cls.__name__}:"]
    if cls.__doc__:
        lines.append(f'    """{cls.__doc__.strip()}"""')
    body: list[str] = list(extra or [])
    for name, value in cls.__dict__.items():
        if name in skip or (name.startswith("_") and name not in ("__init__", "__eq__", "__copy__", "__deepcopy__")):
            continue
        if name == "__init__" and not hasattr(value, "__module__"):
            continue  # a class without a Python constructor (made by the core only)
        qualname = f"{cls.__name__}.{name}"
        if isinstance(value, property):
            body += _property(cls, name, value)
        elif isinstance(value, staticmethod):
            body += _signature(value.__func__.__doc__, name, qualname, "static")
        elif callable(value):
            if value.__doc__ and value.__doc__.startswith("Initialize self"):
                continue
            body += _signature(value.__doc__, name, qualname, "method")
    lines += ["    " + line.replace("\n", "\n    ") for line in body] or ["    ..."]
    return lines


def render() -> str:
    """The stub's text for the core that is imported."""
    from . import _core

    fields = _core.ScoreConfig.fields()
    sections: dict[str, list[dict[str, Any]]] = {}
    for f in fields:
        sections.setdefault(f["section"], []).append(f)

    out = ['"""Type stub of vitfiqa._core (the C++ core). Generated by `python -m vitfiqa._stubgen` from the field',
           'table and the bindings: do not edit; tests/test_stubs.py checks it is current."""',
           "import typing", "import collections.abc", "", "import torch", ""]
    for name in sorted(n for n in sections if n):
        cls = getattr(_core, name[0].upper() + name[1:] + "Section")
        out += ["", f"class {cls.__name__}:", f'    """{cls.__doc__}"""']
        for f in sections[name]:
            short = f["name"][len(name) + 1:]
            choices = f" ({' | '.join(f['choices'])})" if f["choices"] else ""
            out += [f"    {short}: {FIELD_TYPES[f['type']]}",
                    f'    """{f["doc"]}{choices}; default {f["default"]!r}"""']
        out.append("")
    config_attrs: list[str] = []
    for f in sections.get("", []):
        config_attrs += [f"{f['name']}: {FIELD_TYPES[f['type']]}", f'"""{f["doc"]}; default {f["default"]!r}"""']
    for name in (n for n in sections if n):
        config_attrs.append(f"{name}: {name[0].upper() + name[1:]}Section")
    section_names = {n for n in sections if n} | {f["name"] for f in sections.get("", [])}
    out += [""] + _class(_core.ScoreConfig, skip=section_names, extra=config_attrs) + [""]
    for cls_name in ("CaptureRequest", "CaptureModel", "ScriptModel", "ScoreResult", "Scorer"):
        out += [""] + _class(getattr(_core, cls_name)) + [""]
    out.append("")
    for name in sorted(vars(_core)):
        value = getattr(_core, name)
        if name.startswith("_") or isinstance(value, type) or not callable(value):
            continue
        out += _signature(value.__doc__, name, name, "function") + [""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not STUB.is_file() or STUB.read_text() != text:
            print(f"{STUB} is stale: run python -m vitfiqa._stubgen", file=sys.stderr)
            return 1
        return 0
    STUB.write_text(text)
    print(f"wrote {STUB}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
