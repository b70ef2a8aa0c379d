"""SparrowDraftConfig: validation names the field, speculators layout, from_dir."""

from __future__ import annotations

import json

import pytest

from sparrow_vllm.draft.config import DraftConfigError, SparrowDraftConfig


@pytest.mark.parametrize("field,value,words", [
    ("anchor_layers", [0], "[1, target_num_layers - 1 = 29]"),
    ("anchor_layers", [30], "[1, target_num_layers - 1 = 29]"),
    ("anchor_layers", [31], "[1, target_num_layers - 1 = 29]"),
    ("anchor_layers", [], "non-empty"),
    ("anchor_layers", [15, 2], "sorted"),
    ("anchor_layers", [2, 2], "distinct"),
    ("window_size", 0, ">= 1"),
    ("mtp_depth", 0, ">= 1"),
    ("num_layers", 0, ">= 1"),
    ("recipe", "medusa", "['sparrow', 'eagle3']"),
    ("attention", "sliding", "['text_window', 'full']"),
    ("attention", "full", "recipe 'sparrow'"),
    ("draft_vocab_size", 10**6, "target_vocab_size"),
    ("num_key_value_heads", 4, "divide"),
    ("rms_norm_eps", 0.0, "> 0"),
    ("torch_dtype", "int8", "float16"),
])
def test_validation_names_field_and_allowed_values(field, value, words):
    with pytest.raises(DraftConfigError) as e:
        SparrowDraftConfig(**{field: value})
    assert f"SparrowDraftConfig.{field}=" in str(e.value) and words in str(e.value)


def test_eagle3_recipe_needs_full_attention():
    with pytest.raises(DraftConfigError, match="attention"):
        SparrowDraftConfig(recipe="eagle3", attention="text_window")
    assert SparrowDraftConfig(recipe="eagle3", attention="full", anchor_layers=[2, 15, 27]).text_only is False


def test_speculators_layout_and_round_trip(tmp_path):
    cfg = SparrowDraftConfig(anchor_layers=[8, 15], window_size=32, draft_vocab_size=1024, mtp_depth=4)
    cfg.save(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["speculators_model_type"] == "sparrow" and d["architectures"] == ["Eagle3SparrowForCausalLM"]
    assert d["eagle_aux_hidden_state_layer_ids"] == [8, 15] and d["draft_vocab_size"] == 1024
    assert d["norm_before_residual"] is False and d["target_hidden_size"] == 576
    t = d["transformer_layer_config"]
    assert t["model_type"] == "llama" and t["vocab_size"] == 49156 and t["num_hidden_layers"] == 1
    assert t["tie_word_embeddings"] is False and t["hidden_act"] == "silu"
    sc = d["speculators_config"]
    assert sc["algorithm"] == "sparrow" and sc["proposal_methods"][0]["speculative_tokens"] == 5
    assert sc["verifier"]["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert d["sparrow"]["window_size"] == 32
    assert SparrowDraftConfig.from_dir(tmp_path) == cfg


def test_from_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SparrowDraftConfig.from_dir(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(DraftConfigError, match="not a Sparrow draft"):
        SparrowDraftConfig.from_dir(tmp_path)


def test_vllm_reads_the_baseline_as_eagle3(tmp_path):
    """vLLM's own speculators parser turns the baseline into its built-in eagle3 draft."""
    pytest.importorskip("vllm")
    from vllm.transformers_utils.configs.speculators.base import SpeculatorsConfig

    cfg = SparrowDraftConfig(recipe="eagle3", attention="full", anchor_layers=[2, 15, 27], draft_vocab_size=2048)
    d = cfg.to_speculators_dict()
    hf = SpeculatorsConfig.extract_transformers_pre_trained_config(json.loads(json.dumps(d)))
    assert hf["architectures"] == ["Eagle3LlamaForCausalLM"]
    assert hf["eagle_aux_hidden_state_layer_ids"] == [2, 15, 27] and hf["norm_before_residual"] is False
    assert hf["draft_vocab_size"] == 2048 and hf["target_hidden_size"] == 576
    assert SpeculatorsConfig.extract_vllm_speculative_config(d) == {"method": "eagle3", "num_speculative_tokens": 5}


def test_training_and_serving_share_one_anchor_layer_rule():
    """Every anchor layer training accepts, serving accepts, and the other way round: a draft
    cannot be trained that the server refuses."""
    from types import SimpleNamespace

    from sparrow_vllm.serving.config import check_draft_matches_target

    target = SimpleNamespace(hidden_size=576, num_hidden_layers=30, vocab_size=49156)
    for layer in range(-1, 33):
        try:
            cfg = SparrowDraftConfig(anchor_layers=[layer])
        except DraftConfigError:
            trained = False
        else:
            trained = True
        try:
            check_draft_matches_target({"sparrow": {"anchor_layers": [layer]}}, "d", target)
        except ValueError:
            served = False
        else:
            served = True
        assert trained == served == (1 <= layer <= 29), layer
        if trained:
            assert cfg.anchor_layers == [layer]


def test_window_default_is_written_once():
    """W's default lives in draft/config.py; training's and serving's defaults read it."""
    import re
    from pathlib import Path

    import sparrow_vllm

    from sparrow_vllm.draft.config import WINDOW_SIZE
    from sparrow_vllm.draft.train import TrainArgs

    assert SparrowDraftConfig().window_size == TrainArgs(data="d", out="o").window == WINDOW_SIZE
    root = Path(sparrow_vllm.__file__).parent
    literal = re.compile(r"window.*[=,]\s*" + str(WINDOW_SIZE) + r"\b")
    hits = [f"{f.relative_to(root)}:{i}" for f in root.rglob("*.py")
            for i, line in enumerate(f.read_text().splitlines(), 1) if literal.search(line)]
    assert hits == [], hits
