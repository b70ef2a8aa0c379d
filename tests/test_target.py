"""The embedded targets (both families): exact SmolLM2 text stack, deterministic build;
Qwen2.5-VL: vLLM == transformers, mRoPE positions."""

import hashlib

import pytest
import torch

from sparrow_vllm.families import FAMILY_NAMES, get_family
from sparrow_vllm.target import build as qwen_build
from sparrow_vllm.target import llava_onevision as llava_build
from sparrow_vllm.target.smollm2 import load_smollm2

COMMITTED_PARTS = {"qwen2.5-vl": qwen_build.load_vision_parts, "llava-onevision": llava_build.load_vision_parts}
TARGET_DIR_FIXTURE = {"qwen2.5-vl": "target_dir", "llava-onevision": "llava_target_dir"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_only_logits_equal_smollm2(family):
    adapter = get_family(family)
    parts = COMMITTED_PARTS[family]()
    model, tokenizer, _ = adapter.build_model(parts)
    again = adapter.vision_parts_of(model)  # the committed parts go in and come out unchanged
    assert again.keys() == parts.keys() and all(torch.equal(again[k], parts[k]) for k in parts)
    llama, _ = load_smollm2()
    msgs = [{"role": "user", "content": "Name three colours and a shape."}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., : llama.config.vocab_size]
        ref = llama(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _digest(d):
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        h.update((d / name).read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_build_is_deterministic(family, request, tmp_path):
    again = get_family(family).build_target(tmp_path / "again")
    assert _digest(again) == _digest(request.getfixturevalue(TARGET_DIR_FIXTURE[family]))


@pytest.mark.vllm
def test_vllm_and_transformers_agree_on_a_video_answer(target_dir):
    """Also beyond 96 frames, where transformers' own mRoPE would continue the text after
    the video elsewhere than vLLM does (target/mrope.py): 128 frames moved sample 6."""
    from transformers import AutoProcessor

    from sparrow_vllm.offline import run_engine_subprocess, world_prompt_specs
    from sparrow_vllm.target.build import load_hf_target
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    indices, frames = [0, 3, 6, 6], [64, 64, 128, 256]
    got = run_engine_subprocess({"target": str(target_dir), "prompts": world_prompt_specs("test", indices, frames),
                                 "sampling": {"max_tokens": 24}, "engine": {"max_model_len": 4096}})
    model = load_hf_target(target_dir)
    processor = AutoProcessor.from_pretrained(target_dir)
    for i, f, out in zip(indices, frames, got["outputs"]):
        s = make_sample("test", i, f)
        inputs = hf_inputs(processor, s.frames(), s.question)
        model.model.rope_deltas = None
        with torch.no_grad():
            ref = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        ref = ref.tolist()
        if processor.tokenizer.eos_token_id in ref:
            ref = ref[: ref.index(processor.tokenizer.eos_token_id) + 1]
        assert out["token_ids"] == ref, (f, out["text"], processor.tokenizer.decode(ref))


def test_mrope_text_after_a_long_video_continues_past_its_last_frame(target_dir):
    """vLLM's convention (target/mrope.py): equal to transformers' while the video is short,
    one past the last temporal position once that exceeds the spatial extent."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from sparrow_vllm.target.mrope import rope_index
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    processor = AutoProcessor.from_pretrained(target_dir)
    inner = Qwen2_5_VLForConditionalGeneration.from_pretrained(target_dir).model
    video_id = inner.config.video_token_id
    for frames in (16, 256):
        inputs = hf_inputs(processor, make_sample("test", 1, frames).frames(), "Describe the video.")
        kw = {k: inputs[k] for k in ("mm_token_type_ids", "video_grid_thw", "second_per_grid_ts")}
        ours, ours_delta = rope_index(inner, inputs["input_ids"], **kw)
        theirs, _ = type(inner).get_rope_index(inner, inputs["input_ids"], **kw)
        ids = inputs["input_ids"][0]
        last_video = int((ids == video_id).nonzero().max())
        after = ours[:, 0, last_video + 1]
        assert torch.equal(after, torch.full((3,), int(ours[:, 0, : last_video + 1].max()) + 1))
        assert int(ours_delta) == int(ours.max()) + 1 - len(ids)
        if frames == 16:
            assert torch.equal(ours, theirs)
        else:  # 128 temporal groups of 2 frames at 24 fps: temporal positions 0..10 > 3
            assert not torch.equal(ours, theirs)
