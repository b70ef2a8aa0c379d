"""SparrowWorld: determinism, splits, answers consistent with pixels, token budgets, CLI."""

from __future__ import annotations

import argparse
import collections

import numpy as np
import pytest

from sparrow_vllm.world import (BACKGROUND, COLOURS, KIND_SCHEDULE, PALETTE, QUESTION_KINDS,
                                SPLIT_SIZE, frames_for_visual_tokens, load_dataset, load_video,
                                make_sample, sample_seed, score_answer, visual_tokens)
from sparrow_vllm.world import cli

T = 32  # frames for most tests: small and fast


def _samples_of_kind(kind: str, count: int, num_frames: int = T):
    indices = [i for i in range(200) if KIND_SCHEDULE[i % len(KIND_SCHEDULE)] == kind][:count]
    return [make_sample("val", i, num_frames) for i in indices]


def _box_px(obj, height=112, width=112):
    """Pixel slice (rows, cols) of everything the object ever covers, plus 1 px rounding."""
    x0, y0, x1, y1 = obj.swept_box()
    return (slice(max(0, int(y0 * height) - 1), int(np.ceil(y1 * height)) + 1),
            slice(max(0, int(x0 * width) - 1), int(np.ceil(x1 * width)) + 1))


def _foreground(frame: np.ndarray) -> np.ndarray:
    return np.any(frame != np.array(BACKGROUND, np.uint8), axis=-1)


def test_same_seed_same_sample():
    a, b = make_sample("train", 7, T), make_sample("train", 7, T)
    assert np.array_equal(a.frames(), b.frames())
    assert np.array_equal(a.frames(), a.frames())
    assert (a.question, a.answer, a.answer_facts, a.events) == (
        b.question, b.answer, b.answer_facts, b.events)


def test_different_seeds_different_videos():
    videos = [make_sample("train", i, T).frames() for i in range(6)]
    for i in range(len(videos)):
        for j in range(i + 1, len(videos)):
            assert not np.array_equal(videos[i], videos[j])


def test_splits_are_disjoint():
    seeds = {s: {sample_seed(s, i) for i in (0, 1, SPLIT_SIZE // 2, SPLIT_SIZE - 1)}
             for s in ("train", "val", "test")}
    assert not seeds["train"] & seeds["val"] and not seeds["val"] & seeds["test"]
    assert not seeds["train"] & seeds["test"]
    assert max(seeds["train"]) < min(seeds["val"]) and max(seeds["val"]) < min(seeds["test"])
    with pytest.raises(ValueError):
        sample_seed("train", SPLIT_SIZE)  # would spill into val
    with pytest.raises(ValueError):
        sample_seed("dev", 0)
    train, val = make_sample("train", 3, T), make_sample("val", 3, T)
    assert train.id != val.id and not np.array_equal(train.frames(), val.frames())


def test_frames_are_flat_palette_colours():
    pack = lambda rgb: (np.asarray(rgb, np.int64) * [65536, 256, 1]).sum(-1)  # noqa: E731
    allowed = {int(pack(c)) for c in [BACKGROUND] + [PALETTE[c] for c in COLOURS]}
    for i in range(4):
        frames = make_sample("train", i, T).frames()
        assert frames.shape == (T, 112, 112, 3) and frames.dtype == np.uint8
        colours = set(np.unique(pack(frames)).tolist())
        assert colours <= allowed
        assert len(colours) > 1  # something is drawn


def test_objects_are_big_and_never_overlap():
    for i in range(30):
        objs = make_sample("test", i, T).scene.objects
        for o in objs:
            assert 26 <= o.size_px(112, 112) <= 40
            x0, y0, x1, y1 = o.swept_box()
            assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
        boxes = [o.swept_box() for o in objs]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                p, q = boxes[a], boxes[b]
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]


def test_colour_answer_matches_pixels():
    for s in _samples_of_kind("colour", 4):
        colour = next(c for c in COLOURS if c in s.answer.split()[-1])
        obj = s.scene.objects[next(e["object"] for e in s.events if e["name"] in s.question)]
        appear = next(e["frame"] for e in s.events if e["type"] == "appear" and e["name"] == obj.name)
        rows, cols = _box_px(obj)
        patch = s.frames()[appear][rows, cols]
        fg = _foreground(patch)
        assert fg.sum() > 50  # the object is there, and big
        assert (patch[fg] == np.array(PALETTE[colour], np.uint8)).all()


def test_recolour_answer_matches_pixels():
    for s in _samples_of_kind("recolour", 3):
        new = s.answer.rstrip(".").split()[-1]
        event = next(e for e in s.events if e["type"] == "colour" and e["name"] in s.question)
        obj = s.scene.objects[event["object"]]
        rows, cols = _box_px(obj)
        frames = s.frames()
        before, after = frames[event["frame"] - 1][rows, cols], frames[event["frame"]][rows, cols]
        assert (after[_foreground(after)] == np.array(PALETTE[new], np.uint8)).all()
        assert not (before[_foreground(before)] == np.array(PALETTE[new], np.uint8)).all()


@pytest.mark.parametrize("num_frames", [16, 400])
def test_direction_answer_matches_centroid(num_frames):
    step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, col)
    for s in _samples_of_kind("direction", 4, num_frames):
        direction = next(d for d in step if f" {d}." in s.answer)
        move = next(e for e in s.events if e["type"] == "move" and e["name"] in s.question)
        assert move["direction"] == direction
        rows, cols = _box_px(s.scene.objects[move["object"]])
        frames = s.frames()
        cents = []
        for f in (move["frame"], move["end_frame"]):
            ys, xs = np.nonzero(_foreground(frames[f][rows, cols]))
            cents.append(np.array([ys.mean(), xs.mean()]))
        delta = cents[1] - cents[0]
        axis = 0 if step[direction][0] else 1
        assert delta[axis] * sum(step[direction]) > 10  # moved > 10 px the stated way
        assert abs(delta[1 - axis]) < 2


def test_count_and_first_answers_match_events():
    for s in _samples_of_kind("count", 3):
        n = sum(e["type"] == "appear" for e in s.events)
        assert s.answer.split()[0].lower() == ["one", "two", "three"][n - 1]
    for s in _samples_of_kind("first", 3):
        first = s.events[0]
        assert first["type"] == "appear"
        assert s.answer == f"The {first['colour']} {first['name']} appears first."


def test_describe_lists_events_in_order():
    for s in _samples_of_kind("describe", 4):
        sentences = [x for x in s.answer.split(".") if x.strip()]
        assert 2 <= len(sentences) <= 4
        assert len(sentences) == len(s.events) and s.answer.endswith(".")
        assert sentences[0].startswith(f"A {s.events[0]['colour']} {s.events[0]['name']} appears")
        for sent, e in zip(sentences, s.events):
            verb = {"appear": "appears", "move": "moves", "colour": "turns",
                    "disappear": "disappears"}[e["type"]]
            assert verb in sent.split()


def test_question_kind_proportions():
    counts = collections.Counter(make_sample("train", i, 16).kind for i in range(40))
    assert counts == {k: round(w * 40) for k, w in QUESTION_KINDS.items()}
    assert abs(sum(QUESTION_KINDS.values()) - 1) < 1e-9


def test_visual_tokens_round_trip():
    assert visual_tokens(16, 112, 112) == 128  # 8 tokens per frame at 112x112
    assert visual_tokens(15, 112, 112) == 128  # odd frame count rounds up a temporal patch
    assert visual_tokens(2, 224, 112) == 8 * 4
    for h, w in [(112, 112), (224, 168)]:
        for tokens in (1, 7, 16, 17, 1000, 25_000):
            f = frames_for_visual_tokens(tokens, h, w)
            assert f % 2 == 0 and visual_tokens(f, h, w) >= tokens
            assert f == 2 or visual_tokens(f - 2, h, w) < tokens
    with pytest.raises(ValueError):
        visual_tokens(16, 100, 112)


def test_long_video_same_story():
    n = frames_for_visual_tokens(25_000)
    assert n == 3126 and visual_tokens(n) >= 25_000
    long, short = make_sample("test", 5, n), make_sample("test", 5, 16)
    frames = long.frames()
    assert frames.shape == (n, 112, 112, 3) and frames.dtype == np.uint8
    assert long.answer == short.answer
    assert [e["type"] for e in long.events] == [e["type"] for e in short.events]
    for el, es in zip(long.events, short.events):  # same times, spread over the longer video
        assert abs(el["frame"] / n - es["frame"] / 16) < 1 / 16 + 1e-9
        assert el["frame"] < n


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["world", *argv, "--no-progress"])
    return args.run(args)


def test_cli_writes_and_resumes(tmp_path):
    out = tmp_path / "ds"
    assert _run_cli(["--out", str(out), "--n", "3", "--frames", "16", "--split", "val"]) == 0
    records = list(load_dataset(out))
    assert [r["index"] for r in records] == [0, 1, 2] and {r["split"] for r in records} == {"val"}
    for r in records:
        video = load_video(out, r)
        assert video.shape == (16, 112, 112, 3) and video.dtype == np.uint8
        assert np.array_equal(video, make_sample("val", r["index"], 16).frames())
    videos = sorted((out / "videos").iterdir())
    assert len(videos) == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in videos}

    # second run: nothing new is written
    assert _run_cli(["--out", str(out), "--n", "3", "--frames", "16", "--split", "val"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == mtimes
    assert list(load_dataset(out)) == records

    # a missing or truncated video is rewritten, the others are kept
    videos[0].unlink()
    videos[1].write_bytes(videos[1].read_bytes()[:1000])
    assert _run_cli(["--out", str(out), "--n", "3", "--frames", "16", "--split", "val"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    assert set(after) == set(mtimes) and after[videos[2].name] == mtimes[videos[2].name]
    assert load_video(out, records[1]).shape == (16, 112, 112, 3)
    assert not list(out.rglob("*.tmp"))

    # more samples via a visual-token budget append records instead of replacing them
    assert _run_cli(["--out", str(out), "--n", "1", "--visual-tokens", "200",
                     "--start-index", "3", "--split", "val"]) == 0
    records = list(load_dataset(out))
    assert len(records) == 4 and records[-1]["num_frames"] == 26  # 13 frame pairs x 16 tokens >= 200
    assert _run_cli(["--out", str(out), "--n", "1", "--frames", "16", "--height", "100"]) == 2


def test_score_answer():
    for kind in ("colour", "describe", "direction"):
        s = _samples_of_kind(kind, 1)[0]
        assert score_answer(s, s.answer) and score_answer(s, s.answer, mode="facts")
        assert score_answer(s, "  " + s.answer.upper().replace(" ", "   "))
        assert score_answer(s.to_record(), s.answer)
        assert not score_answer(s, s.answer + " It disappears.")
    s = _samples_of_kind("colour", 1)[0]
    right = s.answer.rstrip(".").split()[-1]
    wrong = next(c for c in COLOURS if c != right)
    assert not score_answer(s, s.answer.replace(right, wrong))
    assert not score_answer(s, s.answer.replace(right, wrong), mode="facts")
    assert not score_answer(s, s.answer.replace(right, f"{right} and {wrong}"), mode="facts")
    assert score_answer(s, s.answer.replace("The", "the  ").rstrip("."), mode="facts")
    # form: the template with any content words; a wrong colour keeps it, other words do not
    assert score_answer(s, s.answer.replace(right, wrong), mode="form")
    assert not score_answer(s, s.answer.replace(right, f"{right} and {wrong}"), mode="form")
    assert not score_answer(s, "The user", mode="form")
    d = _samples_of_kind("describe", 1)[0]
    assert score_answer(d, d.answer, mode="form") and not score_answer(d, d.answer + " It disappears.", mode="form")
