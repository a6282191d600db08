"""The type stub of the C++ core (vitfiqa/_core.pyi) is generated from the field table and the bindings, and is
current; ScoreConfig's fields are real attributes (dir(), tab completion); mypy passes on the package."""
import subprocess
import sys
from pathlib import Path

import pytest

from vitfiqa import ScoreConfig, _stubgen

ROOT = Path(__file__).resolve().parents[1]


def test_stub_is_generated_from_the_core_and_current():
    assert _stubgen.render() == _stubgen.STUB.read_text(), "run: python -m vitfiqa._stubgen"


def test_every_field_is_an_attribute_in_dir_and_the_stub():
    cfg = ScoreConfig()
    stub = _stubgen.STUB.read_text()
    for f in ScoreConfig.fields():
        section, _, name = f["name"].rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        assert name in dir(owner), f["name"]
        assert getattr(owner, name) == f["default"]
        assert f"    {name}: " in stub, f["name"]
    sections = {f["section"] for f in ScoreConfig.fields()} - {""}
    assert sections == {"attn", "vitnt", "exfiqa", "heatmap"}
    assert sections <= set(dir(cfg))
    cfg.vitnt.blocks = [0, 2]
    cfg.heatmap = {"normalize": "none"}
    assert cfg.get("vitnt.blocks") == [0, 2] and cfg.heatmap.normalize == "none"
    assert repr(cfg.vitnt).startswith("vitnt(blocks=[0, 2], ")
    with pytest.raises(AttributeError):
        cfg.vitnt.blokcs = [0, 1]  # a typo is an error, not a new attribute
    with pytest.raises(AttributeError):
        cfg.heatmapz = True
    with pytest.raises(ValueError, match="vitnt.scale"):
        cfg.vitnt.scale = "fast"


def test_capture_request_is_one_struct():
    from vitfiqa import _core

    r = _core.CaptureRequest(logits_blocks=[1], tokens_final_norm=False)
    assert (r.logits_blocks, r.tokens_final_norm, r.attn_logits) == ([1], False, "qk")
    r.distance_blocks = [0, 2]
    assert r == _core.CaptureRequest(logits_blocks=[1], tokens_final_norm=False, distance_blocks=[0, 2])
    assert not hasattr(_core, "normalize_exits")
    assert _core.square_token_grid(145) == (1, 12) and _core.square_token_grid(3) == (2, 1)
    assert _core.square_token_grid(20) == (4, 4) and _core.square_token_grid(11) == (2, 3)


def test_mypy_passes_on_the_package(tmp_path):
    """The [tool.mypy] settings in pyproject.toml; the package's imports of vitfiqa._core are read from the stub."""
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    run = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Success" in run.stdout
