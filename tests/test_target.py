"""The embedded target: exact SmolLM2 text stack, deterministic build, vLLM == transformers."""

import hashlib

import pytest
import torch

from sparrow_vllm.target.build import build_model, build_target, load_vision_parts
from sparrow_vllm.target.smollm2 import load_smollm2


def test_text_only_logits_equal_smollm2():
    model, tokenizer, _ = build_model(load_vision_parts())
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


def test_build_is_deterministic(target_dir, tmp_path):
    again = build_target(tmp_path / "again")
    assert _digest(again) == _digest(target_dir)


@pytest.mark.vllm
def test_vllm_and_transformers_agree_on_a_video_answer(target_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from sparrow_vllm.offline import run_engine_subprocess, world_prompt_specs
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    indices, frames = [0, 3, 6], 64
    got = run_engine_subprocess({"target": str(target_dir), "prompts": world_prompt_specs("test", indices, frames),
                                 "sampling": {"max_tokens": 24}, "engine": {"max_model_len": 4096}})
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(target_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(target_dir)
    for i, out in zip(indices, got["outputs"]):
        s = make_sample("test", i, frames)
        inputs = hf_inputs(processor, s.frames(), s.question)
        with torch.no_grad():
            ref = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        ref = ref.tolist()
        if processor.tokenizer.eos_token_id in ref:
            ref = ref[: ref.index(processor.tokenizer.eos_token_id) + 1]
        assert out["token_ids"] == ref, (out["text"], processor.tokenizer.decode(ref))
