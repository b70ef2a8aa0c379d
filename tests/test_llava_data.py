"""The draft pipeline on the second family: `sparrow data`, `train`, `eval-draft` on a tiny
random LLaVA-OneVision, through its adapter only."""

from __future__ import annotations

import pytest
import torch

from draft_factory import write_tiny_llava_target
from sparrow_vllm.draft.data import DataSpec, generate_dataset, load_samples
from sparrow_vllm.families import family_of

FRAMES = 16


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return write_tiny_llava_target(tmp_path_factory.mktemp("llava"), 0)


def spec(**kw):
    base = dict(split="train", n=4, num_frames=FRAMES, layers=[1, 2, 3], all_positions=True,
                max_new_tokens=4, shard_size=2)
    base.update(kw)
    return DataSpec(**base)


@pytest.fixture(scope="module")
def data(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    generate_dataset(target, out, spec(), progress=False)
    return out


def test_the_adapter_is_llava_onevision(target):
    assert family_of(target).name == "llava-onevision"


def test_text_positions_exclude_every_video_token_and_states_are_layer_inputs(target, data):
    family = family_of(target)
    model, proc = family.load_hf(target), family.load_processor(target)
    _, samples = load_samples(data, limit=1)
    s = samples[0]
    video = s["ids"] == model.config.video_token_id
    assert int(video.sum()) == family.visual_tokens(FRAMES) == 16 * FRAMES + 1
    assert (s["text_index"][video] == -1).all()
    assert torch.equal(s["text_index"][~video], torch.arange(int((~video).sum()), dtype=torch.int32))
    # LLaVA-OV has no mRoPE: the position a 1-D draft gets is the sequence position.
    assert torch.equal(s["t_pos"], s["seq_pos"])
    from sparrow_vllm.world import make_sample

    sm = make_sample("train", 0, FRAMES)
    inputs = family.hf_inputs(proc, sm.frames(), sm.question)
    inputs["input_ids"] = s["ids"].long()[None]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    for a, l in enumerate([1, 2, 3]):
        torch.testing.assert_close(s["hidden"][:-1, a].float(), out.hidden_states[l][0, :-1], atol=2e-2, rtol=1e-2)


def test_text_only_storage_does_not_grow_with_video(target, tmp_path):
    rows = {}
    for frames in (16, 32):
        for allpos in (False, True):
            m = generate_dataset(target, tmp_path / f"{frames}-{allpos}",
                                 spec(n=1, num_frames=frames, all_positions=allpos), progress=False)
            rows[frames, allpos] = m["shards"]["0"]["rows"]
    assert rows[16, False] == rows[32, False]
    assert rows[32, True] - rows[16, True] == 16 * (32 - 16)


@pytest.mark.parametrize("recipe", ["sparrow", "eagle3"])
def test_train_and_eval_draft(target, data, tmp_path, recipe):
    import json

    from sparrow_vllm.draft.evaluate import run_eval
    from sparrow_vllm.draft.train import TrainArgs, train

    anchors = [2] if recipe == "sparrow" else [1, 2, 3]
    args = TrainArgs(data=str(data), out=str(tmp_path / "d"), recipe=recipe, anchor_layers=anchors, window=8,
                     mtp_depth=2, intermediate_size=32, draft_vocab=64, steps=4, batch_size=2, warmup=1,
                     eval_every=2, ckpt_every=100, val_data=str(data), progress=False)
    train(args, log=lambda *_: None)
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["speculators_config"]["verifier"]["architectures"] == ["LlavaOnevisionForConditionalGeneration"]
    rep = run_eval(target, tmp_path / "d", data, [1, 3], progress=False)
    assert rep["visual_tokens"] == 16 * FRAMES + 1
    for k in ("1", "3"):
        assert rep["results"][k]["rounds"] > 0 and 1.0 <= rep["results"][k]["tau"] <= int(k) + 1
