"""The documentation runs: every ```python and ```bash block of README.md and docs/**/*.md is executed, in page
order, against the embedded demo models and the files earlier blocks of the same page wrote; a block that
cannot run here (it needs your own model, a cluster, a download) is marked on the line right before it with
``<!-- not-run: reason -->``. The site itself builds with ``mkdocs build --strict`` (warnings are errors).

Each page runs in its own temporary folder, in one subprocess: Python blocks share one namespace (as in a
notebook), bash blocks run in the same folder with the ``vitfiqa`` command of this environment on PATH."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")


def pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def blocks(path: Path) -> list[dict]:
    """Every fenced block of a page: language, first line number, code, and the not-run reason (or None)."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        prev = before[-1].strip() if before else ""
        reason = NOT_RUN.match(prev)
        body = "\n".join(ln[len(m["indent"]):] if ln.startswith(m["indent"]) else ln
                         for ln in m["body"].splitlines())
        out.append(dict(lang=m["lang"].lower(), line=text.count("\n", 0, m.start()) + 2, code=body,
                        reason=reason["reason"] if reason else None))
    return out


RUNNER = r'''
import json, os, subprocess, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for b in blocks:
    try:
        if b["lang"] == "python":
            exec(compile(b["code"], f"{b['page']}:{b['line']}", "exec"), ns)
        else:
            subprocess.run(["bash", "-euo", "pipefail", "-c", b["code"]], check=True, timeout=600)
    except BaseException as exc:
        traceback.print_exc()
        print(f"DOCS-BLOCK-FAILED {b['page']}:{b['line']} ({b['lang']}): {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
'''


def runnable(path: Path) -> list[dict]:
    return [b for b in blocks(path) if b["lang"] in ("python", "bash") and b["reason"] is None]


PAGES = [p for p in pages() if runnable(p)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page, tmp_path):
    rel = str(page.relative_to(ROOT))
    todo = [dict(b, page=rel) for b in runnable(page)]
    (tmp_path / "blocks.json").write_text(json.dumps(todo))
    (tmp_path / "run_blocks.py").write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(tmp_path / "run_blocks.py"), str(tmp_path / "blocks.json")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{rel}: a code block failed\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def test_every_block_is_run_or_marked_with_a_reason():
    """A python/bash block is either executed or carries ``<!-- not-run: reason -->`` right before it; a
    comment that looks like the marker but has no reason (or a typo) is an error, not a silent skip."""
    bad = []
    for page in pages():
        text = page.read_text()
        for m in re.finditer(r"<!--\s*not[-_ ]?run\b[^>]*-->", text):
            if not NOT_RUN.match(m.group(0)):
                bad.append((page.name, text.count("\n", 0, m.start()) + 1, m.group(0)))
    assert not bad, bad
    assert sum(len(runnable(p)) for p in pages()) >= 10  # the docs really carry runnable examples


def test_readme_setup_commands_are_marked_not_run():
    first = blocks(ROOT / "README.md")[0]
    assert first["lang"] == "bash" and first["reason"], "the two set-up commands are what CI runs, not a docs test"


# Pages written in parallel by other work on the project, linked from the README before they land; remove an
# entry once its page is on main (the test then checks it like every other link).
PENDING_PAGES = {"docs/bring-your-own-model.md", "docs/baselines.md", "docs/reproduce.md"}


def test_readme_is_a_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    headings = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert len(headings) == len(set(headings)), "no heading twice"
    for link in re.findall(r"\]\((?!https?://|#)([^)#]+)", text):  # relative links point at files that exist
        assert (ROOT / link).exists() or link in PENDING_PAGES, link


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: the option reference (from ScoreConfig.fields()), the CLI reference (from the
    argparse parsers) and the API (mkdocstrings, from the docstrings) are generated; any warning fails."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    options = (tmp_path / "site" / "options" / "index.html").read_text()
    import vitfiqa

    for f in vitfiqa.ScoreConfig.fields():
        assert f["name"] in options
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "--max-pixels" in cli and "vitfiqa train-demo" in cli
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "to_frame" in api and "score_files" in api
