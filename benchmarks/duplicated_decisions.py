"""Count the places in python/ and csrc/ that decide each of a fixed list of decisions (issue 10's
"duplicated-decision count": the method list, option defaults, validations, the extension list, the
normaliser, decoders, column names).

    python benchmarks/duplicated_decisions.py [--root REPO] [--out FILE]

Pattern-based and meant to be audited: every hit is printed as ``file:line`` with its code, so a reader can
see what was counted and argue with it. What is NOT looked at: comments, docstrings (Python) and the tests.
A "place" is one code line, except for validations, where it is one function (an ``if`` and the ``raise``
of one check, or a list and the message spelling it, count once per function). Python is read with
``ast``/``tokenize`` (collection literals, parameter defaults, comparisons); C++ with regular expressions on
its comment-free lines (functions start at column 0 in this code base, which is how a C++ hit finds its
function).

The rules are fixed in ``DECISIONS`` below; keep them unchanged between the before and after runs so the
two counts compare (a rule that must change to follow renamed code is a different measurement: say so).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import io
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

METHOD_NAMES = {"attn", "vitnt", "vitfiqa", "exfiqa"}
IMAGE_EXT = re.compile(r"^\.(jpe?g|png|bmp|webp|tiff?|gif|ppm|pgm)$", re.I)


@dataclass(frozen=True)
class Hit:
    decision: str
    path: str
    line: int
    function: str
    code: str


# decision id -> (group, description). Order = report order.
DECISIONS = {
    "method_list": ("methods", "the list of method names (>= 3 of attn/vitnt/vitfiqa/exfiqa in one literal or message)"),
    "method_check": ("methods", "method-name validation (membership test / 'unknown method' error), per function"),
    "no_method_check": ("methods", "'no method requested' validation, per function"),
    "default_methods": ("methods", "the default method selection attn+vitnt (parameter/field/CLI default)"),
    "method_branch": ("methods", "code branching on one method's name (== / in / count of a method-name literal)"),
    "exit_column": ("columns", "the EX-FIQA exit column name exfiqa_exit<depth> built"),
    "fusion_columns": ("columns", "the EX-FIQA fusion column names exfiqa_F / exfiqa_FW spelled"),
    "structured_keys": ("columns", "result keys carrying structure by name (_heatmap, _heatmap_grid, exfiqa_exits, "
                                   "attention_logits., block_tokens., vitnt_patch_quality)"),
    "exit_depth_rule": ("columns", "the block -> 1-based exit depth rule"),
    "image_size_112": ("defaults", "the literal 112 (face image size) in code"),
    "vitnt_scale_default": ("defaults", "ViTNT scale default 8.0"),
    "heatmap_norm_default": ("defaults", "heatmap normalisation default ('image' / 'global')"),
    "attn_block_default": ("defaults", "ATTN-FIQA block default -1"),
    "attn_tokens_default": ("defaults", "ATTN-FIQA token default (all tokens / patches_only false)"),
    "vitnt_weighting_default": ("defaults", "ViTNT weighting default 'uniform'"),
    "vitnt_attention_blocks_default": ("defaults", "ViTNT attention-blocks default 'last'"),
    "exit_normalization_default": ("defaults", "EX-FIQA exit normalisation default 'none'"),
    "quality_output_default": ("defaults", "quality/exit output default -1"),
    "channel_order_default": ("defaults", "channel order default 'rgb'"),
    "normalization_default": ("defaults", "normalisation mean/std 0.5 default"),
    "batch_size_default": ("defaults", "scoring batch-size default 64"),
    "batch_size_check": ("validations", "batch size must be positive, per function"),
    "heatmap_mode_check": ("validations", "heatmap-mode vocabulary (image/global[/range]/none) spelled or checked, per function"),
    "heatmap_range_check": ("validations", "'a value range only with global normalisation' check, per function"),
    "attn_tokens_check": ("validations", "attn tokens vocabulary all/patches checked, per function"),
    "vitnt_weighting_check": ("validations", "ViTNT weighting vocabulary uniform/attention checked, per function"),
    "vitnt_attention_blocks_check": ("validations", "ViTNT attention-blocks vocabulary last/all checked, per function"),
    "exit_normalization_check": ("validations", "exit normalisation vocabulary none/zscore/minmax checked, per function"),
    "channel_order_check": ("validations", "channel-order vocabulary rgb/bgr spelled, per function"),
    "extension_list": ("inputs", "an image file-extension list"),
    "normaliser": ("inputs", "the (x/255 - 0.5)/0.5 normaliser computed"),
    "inverse_normaliser": ("inputs", "the inverse normaliser x*0.5+0.5 (x*std+mean) computed"),
    "image_decoder": ("inputs", "an image decoder call (PIL Image.open, cv2.imread/imdecode, ...)"),
    "heatmap_minmax": ("inputs", "heatmap min-max normalisation computed"),
}

PER_FUNCTION = {k for k in DECISIONS if k.endswith("_check")}


# ---------------------------------------------------------------- Python ----------------------------------
def _str_elems(node) -> list[str] | None:
    """String elements of a tuple/list/set literal (or the keys and values of a dict literal)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = node.elts
    elif isinstance(node, ast.Dict):
        items = [k for k in node.keys if k is not None] + list(node.values)
    else:
        return None
    return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def _num(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _num(node.operand)
        return -v if v is not None else None
    return None


def _const(node):
    return node.value if isinstance(node, ast.Constant) else None


def _default_sites(tree):
    """(name, value node, line) of every default: parameter defaults, class-body fields, module constants,
    ``default=`` keywords (argparse), ``.get(key, default)`` fallbacks, dict-literal entries."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            pos = a.posonlyargs + a.args
            for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults):
                yield arg.arg, d, d.lineno
            for arg, d in zip(a.kwonlyargs, a.kw_defaults):
                if d is not None:
                    yield arg.arg, d, d.lineno
        elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
            yield node.target.id, node.value, node.value.lineno
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    yield t.id, node.value, node.value.lineno
        elif isinstance(node, ast.Call):
            name = None
            if node.args and isinstance(_const(node.args[0]), str):
                name = node.args[0].value
            for kw in node.keywords:
                if kw.arg == "default" and name:
                    yield name, kw.value, kw.value.lineno
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "setdefault") and len(node.args) == 2 \
                    and name:
                yield name, node.args[1], node.args[1].lineno
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is not None and isinstance(_const(k), str):
                    yield k.value, v, v.lineno


def _default_rules(name: str, value) -> list[str]:
    """Which default decisions a (name, value) default site decides."""
    n = name.lower().lstrip("-").replace("-", "_")
    c, num, elems = _const(value), _num(value), _str_elems(value)
    out = []
    if "scale" in n and num == 8.0:
        out.append("vitnt_scale_default")
    if re.search(r"normali[sz]e|(^|_)mode$", n) and c in ("image", "global"):
        out.append("heatmap_norm_default")
    if re.search(r"(^|_)block$", n) and num == -1:
        out.append("attn_block_default")
    if (n in ("attn_tokens", "tokens") and c == "all") or (n.endswith("patches_only") and c is False):
        out.append("attn_tokens_default")
    if "weighting" in n and c == "uniform":
        out.append("vitnt_weighting_default")
    if n.endswith("attention_blocks") and c == "last":
        out.append("vitnt_attention_blocks_default")
    if re.search(r"(^|_)normali[sz]ation$", n) and c == "none":
        out.append("exit_normalization_default")
    if re.search(r"(^|quality_|exit_)output$", n) and num == -1:
        out.append("quality_output_default")
    if "channel_order" in n and c == "rgb":
        out.append("channel_order_default")
    if n in ("mean", "std") and num == 0.5:
        out.append("normalization_default")
    if n == "batch_size" and num == 64:
        out.append("batch_size_default")
    if "method" in n and ((elems is not None and set(elems) == {"attn", "vitnt"} and len(elems) == 2)
                          or (isinstance(c, str) and re.fullmatch(r"\s*attn\s*,\s*vitnt\s*", c))):
        out.append("default_methods")
    return out


def _docstring_lines(tree) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(_const(first.value), str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def _functions(tree) -> list[tuple[int, int, str]]:
    spans = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                spans.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return spans


def _enclosing(spans, line: int) -> str:
    best = None
    for start, end, name in spans:
        if start <= line <= end and (best is None or start >= best[0]):
            best = (start, name)
    return best[1] if best else "<module>"


LINE_RULES = [  # (decision, regex) applied to comment- and docstring-free code lines, both languages
    ("exit_column", re.compile(r"exfiqa_exit(?!s)")),
    ("fusion_columns", re.compile(r"[\"']exfiqa_FW?[\"']")),
    ("structured_keys", re.compile(r"_heatmap(_grid)?[\"']|[\"'](attention_logits|block_tokens)\.|"
                                   r"[\"']exfiqa_exits[\"']|[\"']vitnt_patch_quality[\"']")),
    ("exit_depth_rule", re.compile(r"%\s*[\w.]*num_blocks\)?\s*\)?\s*\+\s*1|depths?\.(push_back|append)\(\s*\w+\s*\+\s*1\s*\)|"
                                   r"\bd(epth)?\s*\+=\s*1\b")),
    ("batch_size_check", re.compile(r"batch_size\w*\)?\s*(<=\s*0|<\s*1|>\s*0|>=\s*1)\b")),
    ("method_check", re.compile(r"unknown method")),
    ("no_method_check", re.compile(r"no method requested")),
    ("heatmap_range_check", re.compile(r"(value|heatmap)[ _]range (is a global|goes with)|is a fixed global range")),
    ("attn_tokens_check", re.compile(r"[\"']?all[\"']?\s*(or|,|\|)\s*[\"']?patches")),
    ("vitnt_weighting_check", re.compile(r"uniform[\"']?\s*(or|,|\|)\s*[\"']?attention")),
    ("vitnt_attention_blocks_check", re.compile(r"last[\"']?\s*(or|,|\|)\s*[\"']?all\b")),
    ("exit_normalization_check", re.compile(r"zscore[\"']?\s*(or|,|\|)\s*[\"']?minmax")),
    ("channel_order_check", re.compile(r"[\"']rgb[\"']\s*(or|,)\s*[\"']bgr[\"']")),
    ("heatmap_mode_check", re.compile(r"image[\"']?\s*(,|or|\|)\s*[\"']?global")),
    ("normaliser", re.compile(r"/\s*255(\.0*)?\s*-\s*(0\.5|mean)|/\s*127\.5|-\s*127\.5|/\s*255(\.0*)?\s*\*\s*2(\.0*)?\s*-\s*1")),
    ("inverse_normaliser", re.compile(r"\*\s*0\.5\s*\+\s*0\.5|\*\s*127\.5\s*\+\s*127\.5|\*\s*std\s*\+\s*mean")),
    ("image_decoder", re.compile(r"Image\.open\(|cv2\.(imread|imdecode)\(|imageio\.\w*read|decode_(jpeg|image)\(")),
    ("method_list", re.compile(r"\battn\b[\"']?\s*,\s*[\"']?vitnt\b[\"']?\s*,\s*[\"']?vitfiqa\b")),
]


def scan_python(path: Path, rel: str) -> list[Hit]:
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    raw = src.splitlines()
    skip = _docstring_lines(tree)
    code = list(raw)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            r, c = tok.start
            code[r - 1] = code[r - 1][:c]
    spans = _functions(tree)
    hits: list[Hit] = []

    def add(decision, line):
        hits.append(Hit(decision, rel, line, _enclosing(spans, line), raw[line - 1].strip()))

    for i, text in enumerate(code, start=1):
        if i in skip:
            continue
        for decision, rx in LINE_RULES:
            if rx.search(text):
                add(decision, i)
    for name, value, line in _default_sites(tree):
        if line in skip:
            continue
        for decision in _default_rules(name, value):
            add(decision, line)
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        elems = _str_elems(node)
        if elems:
            s = set(elems)
            if len(s & METHOD_NAMES) >= 3:
                add("method_list", node.lineno)
            if {"image", "global"} <= s:
                add("heatmap_mode_check", node.lineno)
            if {"all", "patches"} <= s:
                add("attn_tokens_check", node.lineno)
            if {"uniform", "attention"} <= s:
                add("vitnt_weighting_check", node.lineno)
            if {"last", "all"} <= s and not {"image", "patches"} & s:
                add("vitnt_attention_blocks_check", node.lineno)
            if {"zscore", "minmax"} <= s:
                add("exit_normalization_check", node.lineno)
            if {"rgb", "bgr"} <= s:
                add("channel_order_check", node.lineno)
            if sum(1 for e in s if IMAGE_EXT.match(e)) >= 3:
                add("extension_list", node.lineno)
        if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) == 3 and all(_num(e) == 0.5 for e in node.elts):
            add("normalization_default", node.lineno)
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            for comp in node.comparators:
                label = comp.id if isinstance(comp, ast.Name) else comp.attr if isinstance(comp, ast.Attribute) else ""
                if label.isupper() and label.endswith("METHODS"):
                    add("method_check", node.lineno)
                elems = _str_elems(comp)
                if elems and len(set(elems) & METHOD_NAMES) >= 2:
                    add("method_check", node.lineno)
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn, ast.Eq, ast.NotEq))
                                                 for op in node.ops):
            if any(_const(x) in METHOD_NAMES for x in [node.left, *node.comparators]):
                add("method_branch", node.lineno)
        if _num(node) == 112 and not isinstance(node, ast.UnaryOp):
            add("image_size_112", node.lineno)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "heatmap" in node.name.lower():
            for sub in ast.walk(node):
                if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub) and isinstance(sub.right, ast.Name) \
                        and sub.right.id == "lo" and sub.lineno not in skip:
                    add("heatmap_minmax", sub.lineno)
    return hits


# ---------------------------------------------------------------- C++ -------------------------------------
def _strip_cpp_comments(src: str) -> list[str]:
    out, i, n, in_block, in_str, quote = [], 0, len(src), False, False, ""
    buf = []
    while i < n:
        ch = src[i]
        if in_block:
            if src.startswith("*/", i):
                in_block, i = False, i + 2
                continue
            if ch == "\n":
                buf.append(ch)
            i += 1
            continue
        if in_str:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(src[i + 1])
                i += 2
                continue
            if ch == quote:
                in_str = False
            i += 1
            continue
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            in_block, i = True, i + 2
            continue
        if ch in "\"'":
            in_str, quote = True, ch
        buf.append(ch)
        i += 1
    return "".join(buf).split("\n")


CPP_FUNC = re.compile(r"^(?!namespace|struct|class|enum|#|using|static_assert|template|}|\s)(?:[\w:<>,&*~]+\s+)*?([\w:~]+)\s*\(")

CPP_DEFAULT_RULES = [
    ("vitnt_scale_default", re.compile(r"scale\w*\s*(=\s*|\{\s*)8(\.0*)?\b")),
    ("image_size_112", re.compile(r"(?<![\w.])112(\.0*)?(?![\w.])")),
    ("method_branch", re.compile(r"count\(\s*\"(attn|vitnt|vitfiqa|exfiqa)\"\s*\)|[=!]=\s*\"(attn|vitnt|vitfiqa|exfiqa)\"")),
    ("heatmap_norm_default", re.compile(r"normali[sz]e\w*\s*(=\s*|\{\s*)\"(image|global)\"")),
    ("attn_block_default", re.compile(r"(^|[^\w])(attn_)?block\s*(=\s*|\{\s*)-1\b")),
    ("attn_tokens_default", re.compile(r"patches_only\s*(=\s*|\{\s*)false|tokens\s*(=\s*|\{\s*)\"all\"")),
    ("vitnt_weighting_default", re.compile(r"weighting\s*(=\s*|\{\s*)\"uniform\"")),
    ("vitnt_attention_blocks_default", re.compile(r"attention_blocks\s*(=\s*|\{\s*)\"last\"")),
    ("exit_normalization_default", re.compile(r"normali[sz]ation\s*(=\s*|\{\s*)\"none\"|py::arg\(\"normali[sz]ation\"\)\s*=\s*\"none\"")),
    ("quality_output_default", re.compile(r"(^|[^\w]|quality_|exit_)output\"?\)?\s*(=\s*|\{\s*)-1\b")),
    ("channel_order_default", re.compile(r"channel_order\w*\s*(=\s*|\{\s*)\"rgb\"")),
    ("normalization_default", re.compile(r"\{\s*0\.5f?\s*,\s*0\.5f?\s*,\s*0\.5f?\s*\}")),
    ("batch_size_default", re.compile(r"batch_size\s*(=\s*|\{\s*)64\b")),
    ("default_methods", re.compile(r"methods?\w*\s*(=\s*|\{\s*)\{?\s*\"attn\"\s*,\s*\"vitnt\"\s*\}")),
    ("method_list", re.compile(r"\"attn\"\s*,\s*\"vitnt\"\s*,\s*\"vitfiqa\"")),
    ("heatmap_mode_check", re.compile(r"\"image\"\s*,\s*\"global\"")),
    ("vitnt_weighting_check", re.compile(r"!=\s*\"uniform\"|==\s*\"attention\"\s*\|\|")),
    ("vitnt_attention_blocks_check", re.compile(r"!=\s*\"last\"")),
    ("exit_normalization_check", re.compile(r"==\s*\"zscore\"")),
    ("heatmap_minmax", re.compile(r"-\s*lo\b")),
]


def scan_cpp(path: Path, rel: str) -> list[Hit]:
    raw = path.read_text(encoding="utf-8").splitlines()
    code = _strip_cpp_comments(path.read_text(encoding="utf-8"))
    hits = []
    func = "<file>"
    for i, text in enumerate(code, start=1):
        m = CPP_FUNC.match(text)
        if m and not text.rstrip().endswith(";"):
            func = m.group(1)
        rules = LINE_RULES + CPP_DEFAULT_RULES
        for decision, rx in rules:
            if not rx.search(text):
                continue
            if decision == "heatmap_minmax" and "heatmap" not in func.lower():
                continue
            hits.append(Hit(decision, rel, i, func, raw[i - 1].strip()))
    return hits


# ---------------------------------------------------------------- report ----------------------------------
def scan(root: Path) -> list[Hit]:
    hits: list[Hit] = []
    for path in sorted((root / "python").rglob("*.py")):
        hits += scan_python(path, path.relative_to(root).as_posix())
    for path in sorted((root / "csrc").rglob("*")):
        if path.suffix in (".cpp", ".h", ".hpp", ".cc", ".cu", ".cuh"):
            hits += scan_cpp(path, path.relative_to(root).as_posix())
    seen, unique = set(), []
    for h in hits:  # one place per line, or per function for validations
        key = (h.decision, h.path, h.function) if h.decision in PER_FUNCTION else (h.decision, h.path, h.line)
        if key not in seen:
            seen.add(key)
            unique.append(h)
    return sorted(unique, key=lambda h: (list(DECISIONS).index(h.decision), h.path, h.line))


def _git(root: Path, *args) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(root: Path, hits: list[Hit]) -> str:
    commit = _git(root, "rev-parse", "--short", "HEAD")
    subject = _git(root, "log", "-1", "--format=%s")
    dirty = _git(root, "status", "--porcelain", "--", "python", "csrc")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    here = Path(__file__).resolve()
    rules = _git(here.parent.parent, "log", "-1", "--format=%h", "--", f"benchmarks/{here.name}")
    edited = _git(here.parent.parent, "status", "--porcelain", "--", f"benchmarks/{here.name}")
    by = {d: [h for h in hits if h.decision == d] for d in DECISIONS}
    lines = ["# Duplicated decisions", "",
             f"Commit `{commit}` ({subject}){' with uncommitted changes in python/ or csrc/' if dirty else ''}; "
             f"counted {now} by `python benchmarks/duplicated_decisions.py` (the rules as of `{rules}`"
             f"{', edited since' if edited else ''}) over python/ and csrc/ "
             "(comments, docstrings and tests not counted; validations counted once per function).", "",
             "A decision made in one place counts 1; `extra` = places beyond the first.", "",
             "| group | decision | places | extra |", "|---|---|---|---|"]
    groups: dict[str, list[int]] = {}
    for d, (group, desc) in DECISIONS.items():
        n = len(by[d])
        extra = max(0, n - 1)
        groups.setdefault(group, [0, 0])
        groups[group][0] += n
        groups[group][1] += extra
        lines.append(f"| {group} | {desc} | {n} | {extra} |")
    total = sum(v[0] for v in groups.values())
    total_extra = sum(v[1] for v in groups.values())
    lines += [f"| **all** | **{len(DECISIONS)} decisions** | **{total}** | **{total_extra}** |", "",
              "| group | places | extra |", "|---|---|---|"]
    lines += [f"| {g} | {p} | {e} |" for g, (p, e) in groups.items()]
    lines += ["", "## Hits", ""]
    for d, (group, desc) in DECISIONS.items():
        lines.append(f"### {d} ({len(by[d])}): {desc}")
        lines.append("")
        for h in by[d]:
            lines.append(f"- `{h.path}:{h.line}` ({h.function}): `{h.code[:150]}`")
        if not by[d]:
            lines.append("- (none)")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="repository root")
    ap.add_argument("--out", help="write the Markdown report here (default: print it)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    text = report(root, scan(root))
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(text.split("## Hits")[0])
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
