"""The package's import graph, read from the source with ``ast`` (top-level and function-level imports alike,
and the ``__init__`` of every subpackage a module's import passes through): no module reaches itself through
its imports (no import circles), and the bottom layers never import the layers built on them."""
import ast
import importlib.util
from pathlib import Path

import vitfiqa

PACKAGE = Path(vitfiqa.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("vitfiqa",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(name: str, is_package: bool, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    """The vitfiqa modules an import statement of module ``name`` loads (the package ``__init__`` of a
    submodule aside, which every submodule import loads first)."""
    found = []
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names if a.name.split(".")[0] == "vitfiqa"]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module.split(".")[0] != "vitfiqa":
            return set()
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            if sub in mods:
                found.append(sub)
            elif importlib.util.find_spec(module) and _is_submodule(sub):
                found.append(sub)  # a compiled submodule (vitfiqa._core): a leaf of the graph
            else:
                found.append(module)  # a name defined in that module
    out = set()
    for target in found:
        while target not in mods and "." in target and not _is_submodule(target):
            target = target.rsplit(".", 1)[0]
        out.add(target)
    out.discard(name)
    return out


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(name, path.name == "__init__.py", node, mods)
        # importing vitfiqa.eval.scores runs vitfiqa/eval/__init__.py first (the root package's aside: every
        # module is inside it)
        for dep in list(deps):
            parts = dep.split(".")
            for n in range(2, len(parts)):
                parent = ".".join(parts[:n])
                if parent in mods and not name.startswith(parent + ".") and parent != name:
                    deps.add(parent)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    graph = import_graph()
    assert "vitfiqa.loader" in graph["vitfiqa.pipeline"] and "vitfiqa._core" in graph["vitfiqa.config"]
    assert "vitfiqa.preprocess" in graph["vitfiqa.align"]
    assert "vitfiqa.baselines" in graph["vitfiqa.eval.reproduction"]  # through baselines/__init__.py
    # the cycle finder finds a planted circle
    assert cycles({**graph, "vitfiqa.options": graph["vitfiqa.options"] | {"vitfiqa.api"}})


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


# Bottom layers and what they may import of vitfiqa (anything else would run back up).
LAYERS = {
    "vitfiqa.options": set(),
    "vitfiqa.digest": set(),
    "vitfiqa.embeddings": set(),
    "vitfiqa.results": {"vitfiqa.options"},
    "vitfiqa.preprocess": {"vitfiqa.options"},
    "vitfiqa.contract": {"vitfiqa.preprocess"},
    "vitfiqa.align": {"vitfiqa.options", "vitfiqa.preprocess"},
    "vitfiqa.config": {"vitfiqa._core"},
}


def test_bottom_layers_do_not_import_up():
    graph = import_graph()
    for module, allowed in LAYERS.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"
    # the loader builds on decoding and the run options, never on the results table or the API above it
    assert not graph["vitfiqa.loader"] & {"vitfiqa.results", "vitfiqa.api", "vitfiqa.pipeline"}
    for user in ("vitfiqa.api", "vitfiqa.recognizer", "vitfiqa.fr_models", "vitfiqa.baselines.model"):
        assert "vitfiqa.models" not in graph[user], f"{user} reads the input contract from vitfiqa.contract"
    # the recogniser (used by the evaluation) builds on the embedding arithmetic, not on the evaluation package
    assert not {m for m in graph["vitfiqa.recognizer"] if m.startswith("vitfiqa.eval")}
