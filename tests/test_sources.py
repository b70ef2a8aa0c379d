"""``sparrow data --from``: a user's own videos and prompts in LLaVA-Video, OpenAI-chat and
folder layouts; every record kept or skipped with its reason."""

from __future__ import annotations

import json

import pytest

from sparrow_vllm.harness.own_videos import write_llava, write_openai, write_videos
from sparrow_vllm.draft.sources import Conversation, Skipped, Tally, read_source


def _read(*args, **kw):
    recs = list(read_source(*args, **kw))
    tally = Tally()
    for r in recs:
        tally.add(r)
    return recs, tally


def test_each_format_reads_its_conversations(tmp_path):
    videos = write_videos(tmp_path / "videos", 4)
    recs, tally = _read(write_llava(tmp_path / "llava.json", videos, tmp_path), video_root=tmp_path)
    assert tally.line() == "kept 4, skipped 0"
    assert recs[0].turns == [("Describe the video.", "Stripes.")] and recs[0].video == videos[0]
    assert recs[1].turns == [("Describe the video.", "Stripes."), ("What moves?", "The camera.")]
    recs, _ = _read(write_openai(tmp_path / "chat.jsonl", videos))
    assert all(isinstance(r, Conversation) for r in recs)
    assert recs[0].video == videos[0] and recs[1].video == videos[1].read_bytes()  # file:// and data:
    assert recs[0].turns == [("What is in the video?", "A pattern.")]
    (tmp_path / "prompts.txt").write_text("Describe it.\n\nWhat happens?\n")
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    recs, tally = _read(tmp_path / "videos", prompts=tmp_path / "prompts.txt")
    assert tally.to_dict() == {"kept": 4, "skipped": {"not a video file": 1}}
    asked = [r.turns[0][0] for r in recs if isinstance(r, Conversation)]
    assert asked == ["Describe it.", "What happens?", "Describe it.", "What happens?"]


def test_every_bad_record_is_counted_with_its_reason(tmp_path):
    (v,) = write_videos(tmp_path / "v", 1)
    human = {"from": "human", "value": "<video>\nQ"}
    gpt = {"from": "gpt", "value": "A"}
    bad = [
        {"id": "a", "video": "v/missing.mp4", "conversations": [human, gpt]},
        {"id": "b", "video": "v/" + v.name, "conversations": [{"from": "human", "value": "Q"}, gpt]},
        {"id": "c", "video": "v/" + v.name, "conversations": [{"from": "human", "value": "<video><video>Q"}, gpt]},
        {"id": "d", "video": "v/" + v.name, "conversations": [human, gpt, {"from": "human", "value": "<video> again"}]},
        {"id": "e", "conversations": [human, gpt]},
        {"id": "f", "video": "v/" + v.name, "conversations": [gpt, human]},
        {"id": "g", "video": "https://example.com/x.mp4", "conversations": [human, gpt]},
        {"id": "h", "messages": [{"role": "system", "content": "be brief"}]},
        {"id": "i", "messages": [{"role": "user", "content": "no video here"}]},
        {"id": "j", "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,@@@"}}, {"type": "text", "text": "Q"}]}]},
        {"id": "k", "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"file://{v}"}},
            {"type": "video_url", "video_url": {"url": f"file://{v}"}}]}]},
        {"id": "l", "frames": 3},
        {"id": "ok", "video": "v/" + v.name, "conversations": [human]},  # a question without an answer
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in bad) + "\nnot json\n")
    recs, tally = _read(path, video_root=tmp_path)
    assert tally.to_dict() == {"kept": 1, "skipped": {
        "missing video file": 1, "no <video> tag": 1, "several <video> tags": 2, "no video field": 1,
        "turns do not alternate human / gpt": 1, "remote video URL (download it first)": 1,
        "system message (not supported)": 1, "no video": 1, "bad base64 in a data URL": 1, "several videos": 1,
        "neither conversations nor messages": 1, "not a JSON object": 1}}
    assert [r.id for r in recs if isinstance(r, Skipped)][:2] == ["a", "b"]
    assert recs[-2].turns == [("Q", None)]
    assert tally.line().startswith("kept 1, skipped 13: 2 several <video> tags, ")
    with pytest.raises(ValueError, match="give --prompts"):
        list(read_source(tmp_path / "v"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(read_source(tmp_path / "nowhere.json"))


def test_sparrow_data_from_says_what_is_wrong_in_one_line(tmp_path):
    from draft_factory import write_tiny_target
    from sparrow_vllm.cli import main

    target = write_tiny_target(tmp_path / "target", 0)
    write_videos(tmp_path / "videos", 1)
    base = ["data", "--target", str(target), "--out", str(tmp_path / "out"), "--layers", "2"]
    cases = [(["--from", str(tmp_path / "none.json")], "no such file or folder"),
             (["--from", str(tmp_path / "videos")], "give --prompts"),
             (["--from", str(tmp_path / "videos"), "--n", "4"], "do not apply"),
             (["--n", "4"], "give --n and --frames"),
             (["--from", str(tmp_path / "videos"), "--simulate-visual-tokens", "4096"], "not to --from"),
             (["--n", "1", "--frames", "64", "--simulate-visual-tokens", "100"], "shorter than the clips"),
             (["--from", str(tmp_path / "videos"), "--prompts", str(tmp_path / "none.txt"), "--layers", "9"],
              "layer ids in")]
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            main(base + args)
