"""Long SparrowWorld: stories whose events grow with the video, the narrate/chat/stream tasks,
their prompts, and narration scoring."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sparrow_vllm.world import visual_tokens
from sparrow_vllm.world.story import (CHAT_MIN_CHARS, CHAT_TURNS, LONG_TASKS, episodes_for, make_long_sample,
                                      narration, parse_narration, score_narration)


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    from sparrow_vllm.target.paths import GGUF_FILE, smollm2_gguf_dir

    return AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=GGUF_FILE)


@pytest.mark.parametrize("task", LONG_TASKS)
def test_long_sample_is_deterministic(task):
    a, b = make_long_sample(task, "val", 3, 128), make_long_sample(task, "val", 3, 128)
    assert a.to_record() == b.to_record()
    assert np.array_equal(a.frames(), b.frames())
    assert a.to_record() != make_long_sample(task, "val", 4, 128).to_record()
    assert a.to_record() != make_long_sample(task, "test", 3, 128).to_record()


def test_events_grow_with_the_video():
    assert [episodes_for(n) for n in (16, 64, 128, 512, 3200, 6400)] == [1, 1, 2, 4, 6, 7]
    assert visual_tokens(128) == 1024 and visual_tokens(3200) == 25600
    short = [len(make_long_sample("narrate", "val", i, 128).events) for i in range(8)]
    long = [len(make_long_sample("narrate", "val", i, 3200).events) for i in range(8)]
    assert sum(long) >= 2.5 * sum(short)  # several times the events, not the same ones slower
    s = make_long_sample("narrate", "val", 0, 3200)
    assert sum(e["type"] == "scene" for e in s.events) == 5
    times = [e["time"] for e in s.events]
    assert times == sorted(times) and times[-1] >= 100  # spread over the ~133 s video


def test_narration_parses_back_to_the_events():
    for i in range(6):
        s = make_long_sample("narrate", "test", i, 512)
        answer = s.turns[0]["answer"]
        parsed = parse_narration(answer)
        assert len(parsed) == len(s.events)
        assert [t for t, _ in parsed] == [e["time"] for e in s.events]
        assert [k[0] for _, k in parsed] == [e["type"] for e in s.events]
        assert score_narration(answer, answer) == {"recall": 1.0, "precision": 1.0, "events": len(s.events),
                                                   "said": len(s.events)}


def test_score_narration_counts_wrong_and_missing_events():
    ref = "At 1 s, a red circle appears. At 3 s, the red circle moves up. At 6 s, the red circle disappears."
    half = "At 1 s, a red circle appears. At 3 s, the red circle moves down."
    assert score_narration(ref, half) == {"recall": 1 / 3, "precision": 0.5, "events": 3, "said": 2}
    late = "At 1 s, a red circle appears. At 5 s, the red circle moves up. At 6 s, the red circle disappears."
    assert score_narration(ref, late)["recall"] == pytest.approx(2 / 3)  # 2 s off is another event
    assert score_narration(ref, late, time_tolerance=2)["recall"] == 1.0
    assert score_narration(ref, "A red circle.")["said"] == 0
    assert score_narration(ref, "")["precision"] == 0.0
    twice = "At 1 s, a red circle appears. At 1 s, a red circle appears."
    assert score_narration(ref, twice)["precision"] == 0.5  # one reference event matches once


def test_narrate_answers_are_long():
    tok = _tokenizer()
    lengths = {n: np.mean([len(tok(make_long_sample("narrate", "val", i, n).turns[0]["answer"]).input_ids)
                           for i in range(8)]) for n in (128, 3200)}
    assert 60 <= lengths[128] <= 250 and 250 <= lengths[3200] <= 600, lengths


def test_chat_turns_refer_back_and_exceed_three_windows():
    tok = _tokenizer()
    for i in range(24):
        s = make_long_sample("chat", "val", i, 128)
        assert CHAT_TURNS[0] <= len(s.turns) <= CHAT_TURNS[1]
        assert s.turns[0]["clip"] == [0, 128] and all(t["clip"] is None for t in s.turns[1:])
        text = " ".join(t["question"] + " " + t["answer"] for t in s.turns)
        assert len(text) >= CHAT_MIN_CHARS or len(s.turns) == CHAT_TURNS[1]
        chat = [m for t in s.turns for m in ({"role": "user", "content": t["question"]},
                                             {"role": "assistant", "content": t["answer"]})]
        assert len(tok(tok.apply_chat_template(chat, tokenize=False)).input_ids) >= 3 * 128  # > 3 x W
        said = s.turns[0]["answer"]
        for t in s.turns[1:]:  # a follow-up names what the narration said
            if t["question"].startswith("You said a "):
                thing = t["question"][len("You said a "):].split(" appears at ")[0]
                assert f"a {thing} appears" in said


def test_stream_brings_one_clip_per_turn():
    s = make_long_sample("stream", "val", 2, 512)
    clips = [t["clip"] for t in s.turns]
    assert len(clips) == episodes_for(512) == 4
    assert clips[0][0] == 0 and clips[-1][1] == 512
    assert all(a[1] == b[0] for a, b in zip(clips, clips[1:]))
    assert all((end - start) % 2 == 0 for start, end in clips)
    video = s.frames()
    assert [len(c) for c in s.clips()] == [end - start for start, end in clips]
    assert np.array_equal(np.concatenate(s.clips()), video)
    # every turn narrates its own clip, with times from the start of the stream
    for t in s.turns:
        times = [x for x, _ in parse_narration(t["answer"])]
        assert times and all(t["clip"][0] // 24 <= x <= t["clip"][1] // 24 for x in times)
    with pytest.raises(ValueError, match="at least 128 frames"):
        make_long_sample("stream", "val", 0, 64)
    with pytest.raises(ValueError, match="unknown task"):
        make_long_sample("caption", "val", 0, 128)


def test_long_turn_prompts_interleave_videos_and_history():
    from sparrow_vllm.target.prompt import long_turn, messages

    s = make_long_sample("stream", "val", 1, 256)
    last = long_turn(s, len(s.turns) - 1)
    assert last["video_turns"] == tuple(range(len(s.turns))) and len(last["videos"]) == len(s.turns)
    assert [q for q, _ in last["history"]] == [t["question"] for t in s.turns[:-1]]
    msgs = messages(last["question"], history=last["history"], video_turns=last["video_turns"])
    assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(s.turns) - 1) + ["user"]
    assert sum(c["type"] == "video" for m in msgs if m["role"] == "user" for c in m["content"]) == len(s.turns)
    c = make_long_sample("chat", "val", 1, 128)
    turn = long_turn(c, 2)
    assert turn["video_turns"] == (0,) and len(turn["videos"]) == 1 and len(turn["history"]) == 2
    assert turn["history"][0] == (c.turns[0]["question"], c.turns[0]["answer"])


def test_narration_of_no_events_is_empty():
    assert narration([]) == ""
    assert score_narration("", "") == {"recall": 1.0, "precision": 1.0, "events": 0, "said": 0}
