"""ScoreConfig: one field table (C++), the same names in Python, parsed and printed, validated once against
the model, options of methods not requested ignored, and the methods as registered core units."""
import copy
import json
import pickle

import pytest
import torch

import vitfiqa
from vitfiqa import ScoreConfig
from vitfiqa.config import score_config


def test_defaults_round_trip_and_print():
    cfg = ScoreConfig()
    assert cfg == ScoreConfig.from_dict(cfg.to_dict()) == pickle.loads(pickle.dumps(cfg)) == copy.deepcopy(cfg)
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    fields = ScoreConfig.fields()
    assert {f["name"] for f in fields} >= {"methods", "attn.block", "vitnt.blocks", "exfiqa.exits", "heatmap.range"}
    for f in fields:  # every field documented, its default the one the class starts with
        assert f["doc"] and cfg.get(f["name"]) == f["default"]
        assert f"{f['name']}=" in repr(cfg)
    cfg.vitnt.blocks = [0, 2]
    assert cfg != ScoreConfig() and "vitnt.blocks='0,2'" in str(cfg)


@pytest.mark.parametrize("name, text, value", [
    ("vitnt.blocks", "0:4", [0, 1, 2, 3]),
    ("vitnt.blocks", "0:12:4", [0, 4, 8]),
    ("vitnt.blocks", "0,3,5", [0, 3, 5]),
    ("vitnt.blocks", "", []),
    ("attn.block", "-1", -1),
    ("attn.logits", "full", "full"),
    ("vitnt.scale", "3", 3.0),
    ("heatmaps", "true", True),
    ("heatmap.range", "0.5,1.5", [0.5, 1.5]),
    ("methods", "attn, vitnt", ["attn", "vitnt"]),
])
def test_fields_parse_from_text_and_print_back(name, text, value):
    cfg = ScoreConfig()
    cfg.set(name, text)
    assert cfg.get(name) == value
    again = ScoreConfig()
    again.set(name, ScoreConfig.format_value(name, value))
    assert again == cfg


@pytest.mark.parametrize("name, value, msg", [
    ("vitnt.blocks", "a", "vitnt.blocks"),
    ("vitnt.blocks", "3:1", "vitnt.blocks"),
    ("attn.block", "1.5", "attn.block"),
    ("vitnt.scale", [1], "vitnt.scale"),
    ("heatmaps", "maybe", "heatmaps"),
    ("nope.field", 1, "unknown score config field"),
])
def test_bad_values_name_the_field(name, value, msg):
    with pytest.raises(ValueError, match=msg):
        ScoreConfig().set(name, value)


def test_nested_dotted_and_keyword_construction():
    a = ScoreConfig(methods=["attn"], attn={"block": 2}, vitnt={"blocks": "0:3"})
    b = ScoreConfig.from_dict({"methods": "attn", "attn.block": 2, "vitnt.blocks": [0, 1, 2]})
    c = score_config(methods=["attn"], attn_block=2, vitnt_blocks=range(3))
    assert a == b == c
    assert score_config(a, attn_block=None) == a  # a keyword given as None leaves the field as it is
    a.set("attn.block", None)  # set(name, None) is the field's default
    assert a.attn.block == ScoreConfig().attn.block
    with pytest.raises(TypeError, match="unknown scoring option"):
        score_config(attn_blok=1)


def test_methods_and_columns_come_from_the_core(loaded):
    assert vitfiqa.METHODS == tuple(m["name"] for m in vitfiqa._core.methods())
    assert all(m["description"] for m in vitfiqa._core.methods())
    m = loaded("vitfiqa_token-script")
    cols = m.columns(methods=["exfiqa", "attn"], exits=[0, 2])
    assert cols == ["exfiqa_F", "exfiqa_FW", "exfiqa_exit1", "exfiqa_exit3", "attn"]
    r = m.score(torch.randn(2, 3, 112, 112), methods=["exfiqa", "attn"], exits=[0, 2])
    assert list(r.columns()) == ["exfiqa_F", "exfiqa_FW", "attn", "exfiqa_exit1", "exfiqa_exit3"]
    assert sorted(r.to_frame().columns) == sorted(["index", "path"] + cols)


def test_score_columns_and_display_names_come_from_the_method_files(loaded):
    """Each method registers its paper's name and its model-independent score columns with their labels; every
    column a scorer writes (but EX-FIQA's per-exit ones) is one of them, owned by the method that writes it."""
    from vitfiqa.config import display_name, score_columns

    owners = score_columns()
    assert owners == {"attn": "attn", "exfiqa_F": "exfiqa", "exfiqa_FW": "exfiqa", "vitfiqa": "vitfiqa",
                      "vitnt": "vitnt"}
    assert [display_name(m) for m in vitfiqa.METHODS] == ["ATTN-FIQA", "EX-FIQA", "ViT-FIQA", "ViTNT-FIQA"]
    assert [display_name(c) for c in owners] == ["ATTN-FIQA", "EX-FIQA (F)", "EX-FIQA (FW)", "ViT-FIQA",
                                                 "ViTNT-FIQA"]
    assert display_name("my method") == "my method" and display_name("exfiqa_exit3") == "exfiqa_exit3"
    m = loaded("vitfiqa_token-script")
    for method in vitfiqa.METHODS:
        cols = m.columns(methods=[method], exits=[1])
        assert [c for c in cols if c in owners] == [c for c, owner in owners.items() if owner == method]
        assert all(c in owners or c.startswith("exfiqa_exit") for c in cols)


def test_config_and_keywords_give_the_same_scores(loaded):
    m = loaded("timm-script")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    by_keyword = m.score(x, methods=["attn", "vitnt"], attn_block=1, vitnt_blocks=[0, 2], vitnt_scale=3.0)
    cfg = ScoreConfig(methods=["attn", "vitnt"], attn={"block": 1}, vitnt={"blocks": [0, 2], "scale": 3.0})
    by_config = m.score(x, config=cfg)
    for k in ("attn", "vitnt"):
        torch.testing.assert_close(by_config.scores[k], by_keyword.scores[k], rtol=0, atol=0)


def test_options_of_methods_not_requested_are_ignored(loaded):
    """Issue 10: before, exit_normalization='bogus' with attn passed while vitnt_blocks=[99] raised."""
    m = loaded("vitfiqa_token-script")
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    plain = m.score(x, methods=["attn"]).scores["attn"]
    ignored = m.score(x, methods=["attn"], exit_normalization="bogus", vitnt_blocks=[99], vitnt_scale=-1.0,
                      vitnt_weighting="x", heatmap_normalize="x").scores["attn"]
    torch.testing.assert_close(ignored, plain, rtol=0, atol=0)
    # Requested, each is checked against the model before the first batch, naming the field.
    with pytest.raises(IndexError, match="vitnt.blocks"):
        m.score(x, methods=["vitnt"], vitnt_blocks=[99])
    with pytest.raises(ValueError, match="exfiqa.normalization"):
        m.score(x, methods=["exfiqa"], exit_normalization="bogus")
    with pytest.raises(ValueError, match="heatmap.normalize"):
        m.score(x, methods=["attn"], heatmaps=True, heatmap_normalize="x")


def test_results_table_records_the_whole_config(tmp_path, loaded, model_cases):
    from PIL import Image
    import numpy as np

    from vitfiqa.pipeline import score_frame
    from vitfiqa.results import ScoreTable, TableError

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    m = vitfiqa.load(model_cases["timm-script"].path, image_size=32)
    cfg = ScoreConfig(methods=["vitnt"], vitnt={"blocks": [0, 2]})
    score_frame(m, paths, config=cfg, batch_size=2, out=tmp_path / "t")
    assert ScoreConfig.from_dict(ScoreTable.open(tmp_path / "t").run["config"]) == cfg
    other = cfg.copy()
    other.vitnt.scale = 3.0
    with pytest.raises(TableError, match="config"):
        score_frame(m, paths, config=other, batch_size=2, out=tmp_path / "t")


def test_kernel_vocabularies_and_defaults_have_one_owner():
    """The heatmap and exit normalisations are the kernels' vocabularies: the config's choices are theirs, and
    every listed name is one the kernel runs; fuse_exits without options is the config's default normalisation
    with EX-FIQA-FW's depth weighting; every scoring entry point defaults to the one batch size."""
    import inspect

    from vitfiqa import cli, distributed, loader, pipeline
    from vitfiqa.eval import datasets, reproduction
    from vitfiqa.options import DEFAULT_BATCH_SIZE, RunOptions

    choices = {f["name"]: f["choices"] for f in ScoreConfig.fields()}
    grids = torch.rand(3, 2, 2)
    for mode in choices["heatmap.normalize"]:
        assert vitfiqa.render_heatmaps(grids, normalize=mode).shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"\(" + ", ".join(choices["heatmap.normalize"]) + r"\)"):
        vitfiqa.render_heatmaps(grids, normalize="bogus")
    exits = torch.rand(4, 5, dtype=torch.float64)
    for norm in choices["exfiqa.normalization"]:
        assert torch.isfinite(vitfiqa.fuse_exits(exits, [1, 2, 3, 4], normalization=norm)).all()
    with pytest.raises(ValueError, match=r"\(" + ", ".join(choices["exfiqa.normalization"]) + r"\)"):
        vitfiqa.fuse_exits(exits, [1, 2, 3, 4], normalization="bogus")
    default = vitfiqa.fuse_exits(exits, [1, 2, 3, 4])
    assert torch.equal(default, vitfiqa.fuse_exits(exits, [1, 2, 3, 4], fusion="depth",
                                                   normalization=ScoreConfig().exfiqa.normalization))

    for fn in (loader.ImageLoader, datasets.ImageSet.iter_batches, datasets.score_image_set,
               datasets.extract_embeddings):
        assert inspect.signature(fn).parameters["batch_size"].default == DEFAULT_BATCH_SIZE, fn
    for fn in (pipeline.score_files, pipeline.open_table, distributed.score_with_ray):  # they take RunOptions
        assert inspect.signature(fn).parameters["run"].default is None, fn
    assert RunOptions().batch_size == DEFAULT_BATCH_SIZE
    assert reproduction.Config.__dataclass_fields__["batch_size"].default == DEFAULT_BATCH_SIZE
    parser = cli.build_parser()
    for command in ("score", "evaluate"):
        assert parser.parse_args([command] + {"score": ["--images", "x", "--out", "y"],
                                              "evaluate": ["--model", "m", "--bin", "b"]}[command]).batch_size \
            == DEFAULT_BATCH_SIZE
