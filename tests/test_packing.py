"""Packed questions (target/packing.py): each block of a packed training forward must see exactly
what the single-turn prompt of its question sees."""

import pytest
import torch

from sparrow_vllm.families import get_family
from sparrow_vllm.target import train_vision as tv
from sparrow_vllm.target.packing import clip_questions, pack_questions
from sparrow_vllm.world import make_sample
from sparrow_vllm.world.qa import QUESTION_KINDS


def test_clip_questions_ask_other_kinds_of_the_same_scene_reproducibly():
    sample = make_sample("train", 5, 16)
    qas = clip_questions(sample, 8)
    assert qas == clip_questions(sample, 8)
    assert 2 <= len(qas) <= len(QUESTION_KINDS) - 1
    assert sample.question not in [q for q, _ in qas]
    assert len({q for q, _ in qas}) == len(qas)
    assert clip_questions(sample, 3) == qas[:2] and clip_questions(sample, 1) == []
    if any(q == "Describe the video." for q, _ in qas):  # the describe answer is the scene's story
        assert dict(qas)["Describe the video."].startswith(f"A {sample.scene.objects[0].colour} ")


@pytest.fixture(scope="module", params=["qwen2.5-vl", "llava-onevision"])
def model_and_processor(request):
    adapter = get_family(request.param)
    model, _tokenizer, processor = adapter.build_model(None, seed=0)  # a seeded random tower
    model.eval()
    tv.use_long_video_attention(adapter.text_config(model.config))
    return adapter, model, processor


def test_each_packed_block_sees_only_the_video_and_its_own_question(model_and_processor):
    adapter, model, processor = model_and_processor
    sample = make_sample("train", 7, 16)
    frames = sample.frames()
    qas = clip_questions(sample, 8)
    assert len(qas) >= 3
    inputs = adapter.hf_inputs(processor, frames, sample.question, sample.answer)
    packed, position_ids, blocks = pack_questions(adapter, model, processor, inputs, qas)
    assert packed["input_ids"].shape[1] == len(blocks) == position_ids.shape[-1]
    assert int(blocks.max()) == len(qas) + 1

    def logits(ids_and_more, **kw):
        kw = {k: v for k, v in {**ids_and_more, **kw}.items() if k != "labels"}
        with torch.no_grad():
            return model(**kw).logits[0]

    try:
        tv._key_blocks[0] = blocks
        got = logits(packed, position_ids=position_ids)
    finally:
        tv._key_blocks[0] = None
    with torch.no_grad():
        unmasked = logits(packed, position_ids=position_ids)
    prefix = int((blocks == 0).sum())
    for j, (question, answer) in enumerate([(sample.question, sample.answer)] + qas, 1):
        single = adapter.hf_inputs(processor, frames, question, answer)
        rows = blocks == j
        assert torch.equal(packed["input_ids"][0, rows], single["input_ids"][0, prefix:])
        assert torch.equal(packed["labels"][0, rows], single["labels"][0, prefix:])
        torch.testing.assert_close(got[rows], logits(single)[prefix:], rtol=1e-4, atol=1e-4)
        if j > 1:  # without the block mask a later question would read the earlier answers
            assert not torch.allclose(unmasked[rows], got[rows], atol=1e-3)


def test_packing_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="questions_per_clip must be >= 1"):
        tv.train_vision(tmp_path / "a", steps=1, questions_per_clip=0)
    with pytest.raises(ValueError, match="does not combine with the grounding loss"):
        tv.train_vision(tmp_path / "b", steps=1, questions_per_clip=4, grounding_weight=0.3)
