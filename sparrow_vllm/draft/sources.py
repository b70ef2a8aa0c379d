"""A user's own videos and prompts for ``sparrow data --from``, in the field's formats.

- LLaVA-Video-178K / ShareGPT4Video conversations (a JSON list or JSONL):
  ``{"id", "video": <path under --video-root>, "conversations": [{"from": "human", "value":
  "<video>\\n..."}, {"from": "gpt", "value": ...}, ...]}``, multi-turn included;
- OpenAI-style chat JSONL, ``{"messages": [...]}`` with one ``video_url`` part (``file://``,
  a path under ``--video-root``, or ``data:video/...;base64,``): requests logged from ``vllm serve``;
- a folder of videos (mp4, webm, mkv, avi) with ``--prompts FILE`` (one prompt a line; video
  ``i`` is asked prompt ``i mod n``).

Every record becomes a :class:`Conversation` or a :class:`Skipped` with its reason; nothing is
dropped silently (:class:`Tally` counts both and prints ``kept N, skipped M: ...``).
"""

from __future__ import annotations

import base64
import collections
import json
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")
VIDEO_TAG = "<video>"


@dataclass
class Conversation:
    """One training record: the video (a file or the bytes of a ``data:`` URL), the user turns
    with the dataset's answers (``None``: none given), and the user turn that brings the video."""

    id: str
    video: Path | bytes
    turns: list[tuple[str, str | None]]
    video_turn: int = 0


@dataclass
class Skipped:
    id: str
    reason: str


@dataclass
class Tally:
    kept: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)

    def add(self, record) -> None:
        if isinstance(record, Skipped):
            self.skipped[record.reason] += 1
        else:
            self.kept += 1

    def to_dict(self) -> dict:
        return {"kept": self.kept, "skipped": dict(sorted(self.skipped.items()))}

    def line(self) -> str:
        n = sum(self.skipped.values())
        reasons = ", ".join(f"{c} {r}" for r, c in self.skipped.most_common())
        return f"kept {self.kept}, skipped {n}" + (f": {reasons}" if n else "")


def read_source(path, video_root=None, prompts=None):
    """Records of ``path`` (a folder, a ``.json`` list or a ``.jsonl`` file; the layout of each
    record decides LLaVA or OpenAI), in order: ``Conversation`` or ``Skipped``."""
    path = Path(path)
    root = Path(video_root) if video_root else path.parent
    if path.is_dir():
        if prompts is None:
            raise ValueError(f"--from {path} is a folder of videos: give --prompts FILE (one prompt a line)")
        yield from read_folder(path, prompts)
        return
    if not path.is_file():
        raise FileNotFoundError(f"--from {path}: no such file or folder")
    if prompts is not None:
        raise ValueError("--prompts goes with a folder of videos (--from DIR), not with a conversation file")
    for i, rec in _records(path):
        if not isinstance(rec, dict):
            yield Skipped(f"line{i}", "not a JSON object")
        elif "messages" in rec:
            yield openai_record(rec, root, f"line{i}")
        elif "conversations" in rec:
            yield llava_record(rec, root, f"line{i}")
        else:
            yield Skipped(str(rec.get("id", f"line{i}")), "neither conversations nor messages")


def _records(path: Path):
    text = path.read_text()
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--from {path}: not valid JSON ({e})") from None
        yield from enumerate(data if isinstance(data, list) else [data])
        return
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                yield i, json.loads(line)
            except ValueError:
                yield i, None


def _video_file(ref: str, root: Path):
    """A local video path (``file://`` URL, absolute, or under ``root``) or the bytes of a
    ``data:`` URL; a ``Skipped`` reason string when it is not usable."""
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if not head.startswith("data:video/") or ";base64" not in head:
            return "not a base64 video data URL"
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError:
            return "bad base64 in a data URL"
    if ref.startswith(("http://", "https://")):
        return "remote video URL (download it first)"
    p = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        return "missing video file"
    return p


def llava_record(rec: dict, root: Path, fallback_id: str):
    rid = str(rec.get("id", fallback_id))
    if not rec.get("video"):
        return Skipped(rid, "no video field")
    turns, question = [], None
    for m in rec["conversations"] or ():
        who, value = m.get("from"), m.get("value") or ""
        if who == "human" and question is None:
            question = value
        elif who == "gpt" and question is not None:
            turns.append((question, value))
            question = None
        else:
            return Skipped(rid, "turns do not alternate human / gpt")
    if question is not None:
        turns.append((question, None))
    if not turns:
        return Skipped(rid, "no human turn")
    tagged = [i for i, (q, _) in enumerate(turns) if VIDEO_TAG in q]
    if not tagged:
        return Skipped(rid, "no <video> tag")
    if len(tagged) > 1 or turns[tagged[0]][0].count(VIDEO_TAG) > 1:
        return Skipped(rid, "several <video> tags")
    video = _video_file(str(rec["video"]), root)
    if isinstance(video, str):
        return Skipped(rid, video)
    turns = [(q.replace(VIDEO_TAG, "").strip(), a) for q, a in turns]
    return Conversation(rid, video, turns, tagged[0])


def openai_record(rec: dict, root: Path, fallback_id: str):
    rid = str(rec.get("id", fallback_id))
    turns, question, video, video_turn = [], None, None, None
    for m in rec["messages"] or ():
        role, content = m.get("role"), m.get("content")
        if role == "system":
            return Skipped(rid, "system message (not supported)")
        if role == "user" and question is None:
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
            videos = [p for p in parts if p.get("type") == "video_url"]
            if len(videos) > 1 or (videos and video is not None):
                return Skipped(rid, "several videos")
            if videos:
                video, video_turn = (videos[0].get("video_url") or {}).get("url", ""), len(turns)
            if any(p.get("type") not in ("text", "video_url") for p in parts):
                return Skipped(rid, "image or audio part (not supported)")
            question = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text").strip()
        elif role == "assistant" and question is not None:
            turns.append((question, content if isinstance(content, str) else
                          "".join(p.get("text", "") for p in content or ())))
            question = None
        else:
            return Skipped(rid, "turns do not alternate user / assistant")
    if question is not None:
        turns.append((question, None))
    if not turns:
        return Skipped(rid, "no user turn")
    if video is None:
        return Skipped(rid, "no video")
    found = _video_file(video, root)
    if isinstance(found, str):
        return Skipped(rid, found)
    return Conversation(rid, found, turns, video_turn)


def read_folder(folder: Path, prompts):
    lines = [x.strip() for x in Path(prompts).read_text().splitlines() if x.strip()]
    if not lines:
        raise ValueError(f"--prompts {prompts}: no prompt in it")
    k = 0
    for p in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        if p.suffix.lower() not in VIDEO_EXTENSIONS:
            yield Skipped(p.name, "not a video file")
            continue
        yield Conversation(p.stem, p, [(lines[k % len(lines)], None)], 0)
        k += 1
