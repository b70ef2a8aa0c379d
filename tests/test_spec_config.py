import json
from types import SimpleNamespace

import pytest

from draft_factory import write_random_draft
from sparrow_vllm.spec_config import SparrowConfigError, translate


@pytest.fixture
def target(tmp_path):
    t = tmp_path / "target"
    t.mkdir()
    text = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 300}
    (t / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"],
                                               "text_config": text}))
    hf = SimpleNamespace(**text)
    return t, SimpleNamespace(model=str(t), hf_config=hf)


def _draft(tmp_path, t, **kw):
    return write_random_draft(tmp_path / "draft", t, anchor_layers=kw.pop("anchors", (3,)),
                              draft_vocab=32, intermediate=32, **kw)


def test_translate_to_eagle3_with_draft_defaults(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    cfg, overrides = translate({"method": "sparrow", "model": str(d)}, tmc)
    assert cfg == {"method": "eagle3", "model": str(d), "num_speculative_tokens": 3}
    assert overrides == {}


def test_window_override_is_validated(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    _, overrides = translate({"method": "sparrow", "model": str(d), "window_size": 32}, tmc)
    assert overrides == {"window_size": 32}
    with pytest.raises(SparrowConfigError, match="window_size must be a positive integer"):
        translate({"method": "sparrow", "model": str(d), "window_size": 0}, tmc)


def test_anchor_override_must_match_training(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    translate({"method": "sparrow", "model": str(d), "anchor_layers": [3]}, tmc)
    with pytest.raises(SparrowConfigError, match="anchor layers are fixed by training"):
        translate({"method": "sparrow", "model": str(d), "anchor_layers": [2]}, tmc)


@pytest.mark.parametrize("k", [0, -1, 17, 2.5, "3"])
def test_bad_num_speculative_tokens(tmp_path, target, k):
    t, tmc = target
    d = _draft(tmp_path, t)
    with pytest.raises(SparrowConfigError, match="num_speculative_tokens must be an integer in 1..16"):
        translate({"method": "sparrow", "model": str(d), "num_speculative_tokens": k}, tmc)


def test_missing_and_foreign_draft_dirs(tmp_path, target):
    t, tmc = target
    with pytest.raises(SparrowConfigError, match="does not exist"):
        translate({"method": "sparrow", "model": str(tmp_path / "nope")}, tmc)
    eagle = write_random_draft(tmp_path / "eagle", t, anchor_layers=(1, 3, 4), draft_vocab=32,
                               intermediate=32, recipe="eagle3")
    with pytest.raises(SparrowConfigError, match="is not a Sparrow draft.*eagle3"):
        translate({"method": "sparrow", "model": str(eagle)}, tmc)


def test_draft_for_another_target(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    other = SimpleNamespace(model=str(t), hf_config=SimpleNamespace(
        hidden_size=128, num_hidden_layers=6, vocab_size=300))
    with pytest.raises(SparrowConfigError, match="not trained for this target.*target_hidden_size: draft 64, target 128"):
        translate({"method": "sparrow", "model": str(d)}, other)


def test_no_default_draft_says_how_to_pass_one(target):
    t, tmc = target
    with pytest.raises(SparrowConfigError, match="No Sparrow draft is known.*\"model\""):
        translate({"method": "sparrow"}, tmc)


def test_default_draft_next_to_target(tmp_path, target):
    t, tmc = target
    write_random_draft(t / "sparrow_draft", t, anchor_layers=(3,), draft_vocab=32, intermediate=32)
    cfg, _ = translate({"method": "sparrow"}, tmc)
    assert cfg["model"] == str(t / "sparrow_draft")
