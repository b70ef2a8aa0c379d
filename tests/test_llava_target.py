"""The embedded LLaVA-OneVision target: the Hub checkpoint layout, the adapter's visual token
count, vLLM == transformers (text stack and determinism: test_target.py, both families)."""

import pytest
import torch

from sparrow_vllm.families import get_family
from sparrow_vllm.target import llava_onevision as lo

ADAPTER = get_family("llava-onevision")


@pytest.fixture(scope="module")
def llava_dir(llava_target_dir):
    return llava_target_dir


def test_checkpoint_has_the_hub_siglip_layout(llava_dir):
    # vLLM 0.32 loads SigLIP weights only under the Hub layout's vision_model. prefix.
    from safetensors import safe_open

    with safe_open(str(llava_dir / "model.safetensors"), "pt") as f:
        tower = [k for k in f.keys() if k.startswith("vision_tower.")]
    assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)


def test_missing_vision_parts_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="sparrow train-target --arch llava-onevision"):
        lo.build_target(tmp_path / "t", vision_parts_path=tmp_path / "missing.safetensors")


def test_visual_tokens_match_the_processor(llava_dir):
    from sparrow_vllm.world import make_sample

    processor = ADAPTER.load_processor(llava_dir)
    video_id = processor.tokenizer.convert_tokens_to_ids(lo.VIDEO_TOKEN)
    for frames in (16, 24, 64):
        s = make_sample("test", 1, frames)
        inputs = ADAPTER.hf_inputs(processor, s.frames(), s.question, s.answer)
        n = int((inputs["input_ids"] == video_id).sum())
        assert n == ADAPTER.visual_tokens(frames) == 16 * frames + 1
        assert processor._get_num_multimodal_tokens(video_sizes=[(frames, 112, 112)])["num_video_tokens"] == [n]
        assert tuple(inputs["pixel_values_videos"].shape) == (1, frames, 3, 112, 112)
        # labels: the answer and <|im_end|> only
        answer = processor.tokenizer(s.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        labels = inputs["labels"][0]
        assert labels[-len(answer):].tolist() == answer and bool((labels[: -len(answer)] == -100).all())
    # the placeholder the chat template emits, for text-only prompts
    assert ADAPTER.video_placeholder() in ADAPTER.prompt_text(processor, "Q?")
    assert ADAPTER.frames_for_visual_tokens(1025) == 64


def test_chat_and_stream_turns(llava_dir):
    """The long tasks on this family: a chat turn carries the earlier turns, a stream turn one
    video per clip, each expanded to its own 16 * frames + 1 tokens."""
    from sparrow_vllm.target.prompt import long_turn
    from sparrow_vllm.world.story import make_long_sample

    processor = ADAPTER.load_processor(llava_dir)
    video_id = processor.tokenizer.convert_tokens_to_ids(lo.VIDEO_TOKEN)
    for task, frames in (("chat", 64), ("stream", 200)):
        sample = make_long_sample(task, "test", 3, frames)
        turn = long_turn(sample, len(sample.turns) - 1)
        assert turn["history"]
        inputs = ADAPTER.hf_inputs(processor, turn["videos"], turn["question"], turn["answer"], turn["history"],
                                   turn["video_turns"])
        videos = turn["videos"]
        assert int((inputs["input_ids"] == video_id).sum()) == sum(ADAPTER.visual_tokens(len(v)) for v in videos)
        text = processor.tokenizer.decode(inputs["input_ids"][0])
        assert text.count(lo.VIDEO_PLACEHOLDER) == len(videos) == len(turn["video_turns"])
        assert all(q in text and a in text for q, a in turn["history"])
        prompt = ADAPTER.vllm_prompt(processor, turn["videos"], turn["question"], turn["history"], turn["video_turns"])
        assert prompt["prompt"] == ADAPTER.prompt_text(processor, turn["question"], turn["history"],
                                                       turn["video_turns"])
    sample = make_long_sample("stream", "test", 3, 460)
    uneven = long_turn(sample, len(sample.turns) - 1)  # clips of 152, 154, 154 frames
    with pytest.raises(ValueError, match="must have one length"):
        ADAPTER.hf_inputs(processor, uneven["videos"], uneven["question"], None, uneven["history"],
                          uneven["video_turns"])


@pytest.mark.vllm
def test_vllm_and_transformers_agree_on_chat_and_stream_turns(llava_dir):
    """A chat's last turn (the earlier turns in the prompt) and a stream's second turn (two
    videos in one prompt): the same prompt length and greedy tokens in vLLM and transformers."""
    from sparrow_vllm.harness.offline import long_prompt_specs, run_engine_subprocess
    from sparrow_vllm.target.prompt import long_turn
    from sparrow_vllm.world.story import make_long_sample

    cases = [("chat", 2, 64), ("stream", 5, 128)]
    specs = [spec for task, i, f in cases for spec in long_prompt_specs(task, "test", [i], f)]
    got = run_engine_subprocess({"target": str(llava_dir), "prompts": specs, "sampling": {"max_tokens": 24},
                                 "engine": {"max_model_len": 4096, "max_num_seqs": 2,
                                            "limit_mm_per_prompt": {"video": 2, "image": 1}}})
    model = ADAPTER.load_hf(llava_dir)
    processor = ADAPTER.load_processor(llava_dir)
    for (task, i, f), out in zip(cases, got["outputs"]):
        sample = make_long_sample(task, "test", i, f)
        turn = long_turn(sample, len(sample.turns) - 1)
        inputs = ADAPTER.hf_inputs(processor, turn["videos"], turn["question"], None, turn["history"],
                                   turn["video_turns"])
        _assert_same_greedy_answer(model, processor, inputs, out, task)


@pytest.mark.vllm
def test_vllm_and_transformers_agree_on_a_video_answer(llava_dir):
    """Same prompt length (vLLM's placeholder expansion == the HF processor's) and the same
    greedy token ids. Batched: videos of different lengths share an encoder batch, which
    vLLM 0.32's LLaVA-OV only survives with vllm_compat patch 7."""
    from sparrow_vllm.harness.offline import run_engine_subprocess, world_prompt_specs
    from sparrow_vllm.world import make_sample

    indices, frames = [0, 3, 6], [16, 64, 128]
    got = run_engine_subprocess({"target": str(llava_dir), "prompts": world_prompt_specs("test", indices, frames),
                                 "sampling": {"max_tokens": 24}, "engine": {"max_model_len": 4096, "max_num_seqs": 4}})
    model = ADAPTER.load_hf(llava_dir)
    processor = ADAPTER.load_processor(llava_dir)
    for i, f, out in zip(indices, frames, got["outputs"]):
        s = make_sample("test", i, f)
        inputs = ADAPTER.hf_inputs(processor, s.frames(), s.question)
        _assert_same_greedy_answer(model, processor, inputs, out, f)


def _assert_same_greedy_answer(model, processor, inputs, out, case):
    """vLLM's output ``out`` has the prompt length of ``inputs`` and transformers' greedy
    tokens for them (up to the first end-of-turn)."""
    eos = ADAPTER.eos_token_ids(processor.tokenizer)
    ADAPTER.before_generate(model)
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    ref = ref.tolist()
    stops = [j for j, t in enumerate(ref) if t in eos]
    ref = ref[: stops[0] + 1] if stops else ref
    assert out["prompt_tokens"] == inputs["input_ids"].shape[1], case
    assert out["token_ids"] == ref, (case, out["text"], processor.tokenizer.decode(ref))
