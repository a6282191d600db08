"""MkDocs hooks: the parts of the site that are generated, so nothing is written twice.

- ``<!-- generated: options -->`` becomes the option reference, a table made from ``vitfiqa.ScoreConfig.fields()``
  (the C++ core's field table: name, keyword, type, default, choices, doc).
- ``<!-- generated: cli -->`` becomes the ``--help`` of ``vitfiqa`` and every subcommand, from the argparse parsers
  (``vitfiqa.cli.build_parser``).
- The measurement files ``benchmarks/results/*.md`` are added to the site under ``results/``, so the docs link
  them where they live in the repository.

Offline and fast: it imports vitfiqa (installed) and formats text.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cell(value) -> str:
    if value is None or value == "":
        return ""
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, (list, tuple)) else \
        "[" + ", ".join(map(str, value)) + "]"
    return "`" + text.replace("|", "\\|") + "`"


def options_reference() -> str:
    import vitfiqa

    rows = ["| field | keyword | type | default | choices | what it does |", "|---|---|---|---|---|---|"]
    for f in vitfiqa.ScoreConfig.fields():
        choices = " ".join(_cell(c) for c in f.get("choices") or [])
        doc = str(f.get("doc", "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{f['name']}` | `{f['keyword']}` | {f['type']} | {_cell(f['default'])} | {choices} | {doc} |")
    return "\n".join(rows) + "\n"


def cli_reference() -> str:
    import argparse

    from vitfiqa.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal width: fixed here so the page is stable
    try:
        parser = build_parser()
        parts = ["## vitfiqa\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, p in sub.choices.items():
            parts.append(f"## vitfiqa {name}\n")
            parts.append("```text\n" + p.format_help().rstrip() + "\n```\n")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


GENERATED = {"<!-- generated: options -->": options_reference, "<!-- generated: cli -->": cli_reference}


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    results = ROOT / "benchmarks"
    for md in sorted((results / "results").glob("*.md")):
        files.append(File(f"results/{md.name}", str(results), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
