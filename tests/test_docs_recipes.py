"""The recipes of docs/bring-your-own-model.md run: every ```python block, in page order, in one namespace, in a
temporary folder (a block marked ``<!-- not-run: reason -->`` on the line before it is skipped)."""
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

PAGE = Path(__file__).resolve().parent.parent / "docs" / "bring-your-own-model.md"
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        if m["lang"] != "python" or (before and before[-1].strip().startswith("<!-- not-run:")):
            continue
        out.append((text.count("\n", 0, m.start()) + 2, m["body"]))
    return out


def test_bring_your_own_model_recipes_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 5  # HF ViT + DINOv2, timm layout, eager module, preset, recogniser
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__main__"}
    for line, code in blocks:
        exec(compile(code, f"{PAGE.name}:{line}", "exec"), ns)
    out = capsys.readouterr().out
    for expected in ("(112, 112) transformers", "timm (64, 64)", "preset (112, 112) 12", "(2, 1024)"):
        assert expected in out, out
