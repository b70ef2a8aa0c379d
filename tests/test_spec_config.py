import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from draft_factory import write_random_draft
from sparrow_vllm.serving.config import ALLOWED_KEYS, SparrowConfigError, translate
from sparrow_vllm.draft.config import SparrowDraftConfig


QWEN = ["Qwen2_5_VLForConditionalGeneration"]


@pytest.fixture
def target(tmp_path):
    t = tmp_path / "target"
    t.mkdir()
    text = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 300}
    (t / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"],
                                               "text_config": text}))
    hf = SimpleNamespace(architectures=QWEN, **text)
    return t, SimpleNamespace(model=str(t), hf_config=hf)


def _draft(tmp_path, t, **kw):
    return write_random_draft(tmp_path / "draft", t, anchor_layers=kw.pop("anchors", (3,)),
                              draft_vocab=32, intermediate=32, **kw)


def test_translate_to_eagle3_with_draft_defaults(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    cfg, sparrow = translate({"method": "sparrow", "model": str(d)}, tmc)
    assert cfg == {"method": "eagle3", "model": str(d), "num_speculative_tokens": 3,
                   "disable_eagle_block_drop": True}
    # the engine's typed config is the draft's own, with the engine's k
    assert sparrow == SparrowDraftConfig.from_dir(d).replace(num_speculative_tokens=3)


@pytest.mark.parametrize("archs", [["LlamaForCausalLM"], ["Qwen2VLForConditionalGeneration"], None])
def test_a_family_without_an_adapter_is_refused_naming_the_supported_ones(tmp_path, target, archs):
    t, tmc = target
    d = _draft(tmp_path, t)
    tmc.hf_config.architectures = archs
    with pytest.raises(SparrowConfigError) as e:
        translate({"method": "sparrow", "model": str(d)}, tmc)
    msg = str(e.value)
    assert str(archs[0] if archs else "none") in msg
    assert "Qwen2_5_VLForConditionalGeneration" in msg and "LlavaOnevisionForConditionalGeneration" in msg
    assert "sparrow_vllm/families/" in msg


def test_cached_block_reuse_is_the_default_and_can_be_turned_off(tmp_path, target):
    """A Sparrow engine reuses a request's last cached KV block (vLLM's EAGLE path re-prefills
    it); ``"disable_eagle_block_drop": false`` gives vLLM's behaviour back."""
    t, tmc = target
    d = _draft(tmp_path, t)
    cfg, _ = translate({"method": "sparrow", "model": str(d), "disable_eagle_block_drop": False}, tmc)
    assert cfg["disable_eagle_block_drop"] is False
    with pytest.raises(SparrowConfigError, match="disable_eagle_block_drop must be true or false, got 'no'"):
        translate({"method": "sparrow", "model": str(d), "disable_eagle_block_drop": "no"}, tmc)


def test_window_override_is_validated(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    _, sparrow = translate({"method": "sparrow", "model": str(d), "window_size": 32}, tmc)
    assert sparrow.window_size == 32 and SparrowDraftConfig.from_dir(d).window_size != 32
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
        architectures=QWEN, hidden_size=128, num_hidden_layers=6, vocab_size=300))
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


# --- issue 8: every user mistake fails at start-up with one message naming the fix -------

@pytest.mark.parametrize("key, hint", [
    ("num_speculative_token", "did you mean 'num_speculative_tokens'"),
    ("window", "did you mean 'window_size'"),
    ("prompt_lookup_max", ""),  # another method's option: refused, not silently ignored
])
def test_unknown_key_lists_the_allowed_keys(tmp_path, target, key, hint):
    t, tmc = target
    d = _draft(tmp_path, t)
    with pytest.raises(SparrowConfigError, match="Unknown key") as e:
        translate({"method": "sparrow", "model": str(d), key: 3}, tmc)
    msg = str(e.value)
    assert repr(key) in msg and hint in msg
    assert "Allowed keys: " + ", ".join(ALLOWED_KEYS) in msg


def test_hyphenated_keys_are_accepted_like_vllm_does(tmp_path, target):
    t, tmc = target
    d = _draft(tmp_path, t)
    cfg, sparrow = translate({"method": "sparrow", "model": str(d), "num-speculative-tokens": 2,
                              "window-size": 16}, tmc)
    assert cfg["num_speculative_tokens"] == 2 and sparrow.num_speculative_tokens == 2
    assert sparrow.window_size == 16


@pytest.mark.parametrize("w", [0, -8, True, "64", 12.0])
def test_bad_window_size(tmp_path, target, w):
    t, tmc = target
    d = _draft(tmp_path, t)
    with pytest.raises(SparrowConfigError, match="window_size must be a positive integer.*omit the key"):
        translate({"method": "sparrow", "model": str(d), "window_size": w}, tmc)


@pytest.mark.parametrize("k", [10**6, True, None])
def test_absurd_num_speculative_tokens(tmp_path, target, k):
    t, tmc = target
    d = _draft(tmp_path, t)
    if k is None:  # the draft's own default is absurd: the message says where it came from
        cfg = json.loads((d / "config.json").read_text())
        cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"] = 500
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(SparrowConfigError, match="got 500 \\(the default of draft .*pass \"num_speculative_tokens\""):
            translate({"method": "sparrow", "model": str(d)}, tmc)
        return
    with pytest.raises(SparrowConfigError, match="num_speculative_tokens must be an integer in 1..16"):
        translate({"method": "sparrow", "model": str(d), "num_speculative_tokens": k}, tmc)


@pytest.mark.parametrize("anchors, match", [
    ([0], "anchor layer 0 outside the target's layers 1..5"),
    ([6], "anchor layer 6 outside the target's layers 1..5"),
    ([3, 99], "anchor layer 99 outside the target's layers 1..5.*trained on \\[3\\]"),
    (3, "anchor_layers must be a list of target layer ids such as \\[3\\]"),
    ([], "anchor_layers must be a list"),
    (["3"], "anchor_layers must be a list"),
])
def test_anchor_override_outside_target_layers(tmp_path, target, anchors, match):
    t, tmc = target
    d = _draft(tmp_path, t)
    with pytest.raises(SparrowConfigError, match=match):
        translate({"method": "sparrow", "model": str(d), "anchor_layers": anchors}, tmc)


def test_draft_trained_on_anchor_outside_target(tmp_path, target):
    t, tmc = target
    with pytest.raises(ValueError, match="anchor_layers.*target_num_layers - 1 = 5"):
        _draft(tmp_path, t, anchors=(6,))  # the target has layers 0..5: training refuses it too
    d = _draft(tmp_path, t, anchors=(5,))  # ... so a config edited by hand
    cfg = json.loads((d / "config.json").read_text())
    cfg["sparrow"]["anchor_layers"] = cfg["eagle_aux_hidden_state_layer_ids"] = [6]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SparrowConfigError, match="not trained for this target.*anchor layer 6 outside.*sparrow train"):
        translate({"method": "sparrow", "model": str(d)}, tmc)


@pytest.mark.parametrize("field, key, value", [
    ("hidden_size", "target_hidden_size", 128),
    ("vocab_size", "target_vocab_size", 512),
    ("num_hidden_layers", "target_num_layers", 12),
])
def test_draft_for_another_target_each_mismatch(tmp_path, target, field, key, value):
    t, tmc = target
    d = _draft(tmp_path, t)
    text = {"hidden_size": 64, "num_hidden_layers": 6, "vocab_size": 300, field: value}
    other = SimpleNamespace(model=str(t), hf_config=SimpleNamespace(architectures=QWEN, **text))
    want = {"hidden_size": 64, "vocab_size": 300, "num_hidden_layers": 6}[field]
    with pytest.raises(SparrowConfigError,
                       match=f"not trained for this target \\({key}: draft {want}, target {value}\\).*sparrow train"):
        translate({"method": "sparrow", "model": str(d)}, other)


def test_draft_dir_that_is_not_a_sparrow_draft(tmp_path, target):
    t, tmc = target
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(SparrowConfigError, match="is a file, not a directory.*sparrow train"):
        translate({"method": "sparrow", "model": str(f)}, tmc)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SparrowConfigError, match="has no config.json.*sparrow train"):
        translate({"method": "sparrow", "model": str(empty)}, tmc)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(SparrowConfigError, match="is not valid JSON.*sparrow train"):
        translate({"method": "sparrow", "model": str(empty)}, tmc)
    (empty / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(SparrowConfigError, match="is not a Sparrow draft \\(it is \\['LlamaForCausalLM'\\]\\)"):
        translate({"method": "sparrow", "model": str(empty)}, tmc)
    with pytest.raises(SparrowConfigError, match="\"model\" must be the path of a Sparrow draft directory, got 5"):
        translate({"method": "sparrow", "model": 5}, tmc)


# --- unsupported vLLM, and what the user sees on the command line --------------------------

def test_unsupported_vllm_version(monkeypatch):
    import sparrow_vllm

    sparrow_vllm.check_vllm_version("0.32.0+cpu")
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(__version__="0.33.0"))
    with pytest.raises(sparrow_vllm.UnsupportedVLLMVersion,
                       match="supports vLLM 0.32.0 only, but vLLM 0.33.0 is installed.*pip install vllm==0.32.0"):
        sparrow_vllm.check_vllm_version()


OTHER_VERSION = """
import logging, sys
from types import SimpleNamespace
import vllm
vllm.__version__ = "0.33.0"
import sparrow_vllm
sparrow_vllm.register()
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.worker import gpu_model_runner
from vllm import ModelRegistry
# nothing of vLLM is patched but the refusal of a sparrow config
assert not getattr(gpu_model_runner.GPUModelRunner.__init__, "_sparrow", False)
assert "Eagle3SparrowForCausalLM" not in ModelRegistry.get_supported_archs()
try:
    EngineArgs.create_speculative_config(SimpleNamespace(speculative_config={"method": "sparrow"}), None, None)
except sparrow_vllm.UnsupportedVLLMVersion as e:
    print("refused:", e)
"""


def test_other_vllm_version_disables_sparrow_with_one_warning():
    """On another vLLM, a process that does not use Sparrow starts as usual (one warning);
    a Sparrow config stops with the version message."""
    out = subprocess.run([sys.executable, "-c", OTHER_VERSION], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: sparrow-vllm 0.1.0 supports vLLM 0.32.0 only, but vLLM 0.33.0 is installed" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if "Sparrow is disabled" in line]
    assert len(warnings) == 1, out.stderr[-2000:]


@pytest.mark.parametrize("exc", [
    SparrowConfigError("window_size must be a positive integer (text tokens), got 0."),
    "version",
])
def test_excepthook_prints_one_line(monkeypatch, capsys, exc):
    import sparrow_vllm

    if exc == "version":
        exc = sparrow_vllm.UnsupportedVLLMVersion("sparrow-vllm supports vLLM 0.32.0 only")
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    sparrow_vllm._install_excepthook()
    try:
        raise exc
    except Exception as e:
        sys.excepthook(type(e), e, e.__traceback__)
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"


def _llama_dir(tmp_path, target_dir) -> Path:
    """A tiny text-only Llama target (our target's tokenizer) and a Sparrow draft beside it."""
    import shutil

    from transformers import LlamaConfig

    d = tmp_path / "llama"
    d.mkdir()
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=49156, architectures=["LlamaForCausalLM"]).save_pretrained(d)
    for f in Path(target_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, d / f.name)
    return write_random_draft(d / "draft", d, anchor_layers=(2,), draft_vocab=32, intermediate=32)


@pytest.mark.vllm
def test_vllm_serve_cli_fails_with_one_line(target_dir, tmp_path):
    """The real CLI: a bad sparrow config ends `vllm serve` at start-up, before any engine
    starts, with the message and no stack trace."""
    import subprocess

    from sparrow_vllm.serving.cpu_env import apply_cpu_defaults
    from sparrow_vllm.harness.server import free_port

    apply_cpu_defaults(2)
    vllm = str(Path(sys.executable).parent / "vllm")
    cases = [
        ({"method": "sparrow", "num_speculative_token": 3},
         "Unknown key(s) in the sparrow speculative config: 'num_speculative_token' "
         "(did you mean 'num_speculative_tokens'?). Allowed keys: method, model, num_speculative_tokens"),
        ({"method": "sparrow", "model": str(tmp_path / "no-draft")}, "no-draft does not exist"),
        ({"method": "sparrow", "anchor_layers": [40]}, "anchor layer 40 outside the target's layers 1..29"),
        # A target family without an adapter: a text-only Llama.
        ({"method": "sparrow", "model": str(_llama_dir(tmp_path, target_dir))},
         "Sparrow has no adapter for target architecture ['LlamaForCausalLM']"),
    ]
    for config, message in cases:
        # The Llama case serves the directory its draft sits in.
        target = Path(config["model"]).parent if "adapter" in message else target_dir
        p = subprocess.run([vllm, "serve", str(target), "--host", "127.0.0.1", "--port", str(free_port()),
                            "--dtype", "float32", "--enforce-eager", "--speculative-config", json.dumps(config)],
                           capture_output=True, text=True, timeout=240)
        assert p.returncode != 0, p.stdout[-2000:]
        errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], p.stderr[-3000:]
        assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]


def test_draft_whose_weights_disagree_with_its_config_is_one_clear_error(tmp_path, target):
    """A damaged or hand-edited draft stops start-up naming the tensor and both shapes (vLLM's
    loader would die deep inside with `Tried to load weights of size ...`)."""
    t, tmc = target
    d = _draft(tmp_path, t)
    cfg = json.loads((d / "config.json").read_text())
    cfg["sparrow"]["intermediate_size"] = cfg["transformer_layer_config"]["intermediate_size"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SparrowConfigError) as e:
        translate({"method": "sparrow", "model": str(d)}, tmc)
    msg = str(e.value)
    assert "do not match its config.json" in msg and "midlayer.mlp.down_proj.weight: file [" in msg, msg
    assert "config [" in msg and "48" in msg and "\n" not in msg
