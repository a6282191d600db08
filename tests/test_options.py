"""vitfiqa.options: RunOptions and ModelOptions carried whole through load, the pipeline and the recogniser;
the old loose keywords still work for one release, with a DeprecationWarning that names the new home."""
import warnings

import numpy as np
import pytest
import torch

import vitfiqa
from vitfiqa.config import score_config
from vitfiqa.demo import RECOGNIZER
from vitfiqa.options import DEFAULT_BATCH_SIZE, ModelOptions, RunOptions, TrainOptions
from vitfiqa.pipeline import score_frame
from vitfiqa.recognizer import Recognizer


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("opts")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_options_are_typed_values():
    assert ModelOptions(dtype=torch.float16).dtype == "float16"
    assert ModelOptions.of({"device": "cpu", "image_size": 112}) == ModelOptions(image_size=112)
    assert RunOptions.of(None) == RunOptions() and RunOptions().batch_size == DEFAULT_BATCH_SIZE
    assert TrainOptions.of({"epochs": 2}).replace(lr=0.1) == TrainOptions(epochs=2, lr=0.1)
    with pytest.raises(ValueError, match=r"unknown run option\(s\) \['batchsize'\]"):
        RunOptions.of({"batchsize": 3})
    with pytest.raises(TypeError, match="must be a ModelOptions, a dict or None"):
        ModelOptions.of(3)


def test_load_takes_model_options_and_the_old_keywords_warn():
    new = vitfiqa.load(RECOGNIZER, ModelOptions(image_size=96, channel_order="bgr"))
    assert new.image_size == (96, 96) and new.channel_order == "bgr"
    with pytest.warns(DeprecationWarning, match=r"image_size= is deprecated: pass options=ModelOptions\(image_size"):
        old = vitfiqa.load(RECOGNIZER, image_size=96, channel_order="bgr")
    assert old.input_contract == new.input_contract
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        vitfiqa.load(RECOGNIZER, imagesize=96)


def test_score_files_takes_run_options_and_the_old_keywords_warn(images):
    model = vitfiqa.load(RECOGNIZER)
    new = score_frame(model, images, "attn", run=RunOptions(batch_size=2, workers=1))
    with pytest.warns(DeprecationWarning, match=r"batch_size= is deprecated: pass run=RunOptions\(batch_size=\.\.\.\)"):
        old = score_frame(model, images, "attn", batch_size=2, workers=1)
    assert new.equals(old) and len(new) == 5 and np.isfinite(new["attn"]).all()
    with pytest.raises(ValueError, match="batch_size must be positive"):
        score_frame(model, images, "attn", run=RunOptions(batch_size=0))
    with pytest.raises(ValueError, match="heatmap_format must be one of"):
        score_frame(model, images, "attn", run={"heatmap_format": "gif"})


def test_detection_is_refused_in_one_place_until_it_is_there(images):
    # (the detection work replaces this test with its own when RunOptions.detect / landmarks are implemented)
    model = vitfiqa.load(RECOGNIZER)
    for run in (RunOptions(detect=True), RunOptions(landmarks="lm.txt")):
        with pytest.raises(NotImplementedError, match="detect"):
            score_frame(model, images, "attn", run=run)


def test_recognizer_takes_model_options_and_the_old_keywords_warn():
    new = Recognizer(RECOGNIZER, ModelOptions(channel_order="bgr", normalization={"mean": 0.0, "std": 1.0}),
                     flip="none")
    with pytest.warns(DeprecationWarning, match=r"mean= is deprecated"):
        old = Recognizer(RECOGNIZER, channel_order="bgr", mean=0.0, std=1.0, flip="none")
    assert (new.mean, new.std, new.channel_order) == (old.mean, old.std, old.channel_order) == ((0.0,) * 3, (1.0,) * 3,
                                                                                                "bgr")
    x = np.random.default_rng(1).integers(0, 256, (2, *new.image_size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(new.embed(x), old.embed(x))
    with pytest.raises(ValueError, match="final_norm does not apply"):
        Recognizer(RECOGNIZER, ModelOptions(final_norm="norm"))


def test_score_options_by_section_and_old_flat_keywords():
    new = score_config(methods=["attn", "vitnt"], attn={"block": -2}, vitnt={"blocks": [0, 1], "scale": 8.0})
    assert new == score_config({"vitnt.blocks": [0, 1], "vitnt.scale": 8.0, "attn.block": -2},
                               methods=["attn", "vitnt"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = score_config(methods=["attn", "vitnt"], attn_block=-2, vitnt_blocks=[0, 1], vitnt_scale=8.0)
    assert old == new
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert "vitnt_blocks= is deprecated: pass vitnt={'blocks': ...} (or config={'vitnt.blocks': ...})" in messages
    with pytest.raises(TypeError, match="unknown scoring option 'bogus'"):
        score_config(bogus=1)
    with pytest.raises(TypeError, match="takes a dict"):
        score_config(vitnt=3)
