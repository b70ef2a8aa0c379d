"""Long SparrowWorld videos and the long-answer tasks over them: narrate, chat, stream.

A story is a sequence of episodes (each a :class:`Scene` of 2-3 objects) played back to back,
so a longer video shows more: a video of ``T`` frames holds ``episodes_for(T)`` episodes,
2 at 1k visual tokens, 4 at 4k, 6 at 25k (several times the events, not the same events
slower). Times in answers are whole seconds of the video (24 fps, as the target reads it).

Tasks (each with several phrasings; answers are ground truth from the story):

- ``narrate``: every event in order with its time, one sentence each (100-400 tokens).
- ``chat``: a narration first, then follow-up questions that refer to what was said
  ("You said the red circle appears at 3 s. What does it do after that?", "Now tell it
  backwards", "Repeat what happens from 20 s on"), 3-6 turns, until
  the conversation holds at least ``CHAT_MIN_CHARS`` characters (>= 3 x 128 tokens).
- ``stream``: each user turn brings the next clip (one episode) of the video and asks what
  happens in it; times count from the start of the stream.

Scoring (:func:`score_narration`): sentences are parsed back to events; recall and precision
against the ground truth, an event matching when type, object, colours and direction agree and
its time is within ``time_tolerance`` seconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from sparrow_vllm.world.qa import DIRECTION_PHRASES
from sparrow_vllm.world.scene import Scene, random_scene

FPS = 24  # SparrowWorld videos are 24 fps (the target's VIDEO_FPS)
EPISODE_FRAMES = 64  # one episode per doubling of the video beyond this many frames
LONG_TASKS = ("narrate", "chat", "stream")
CHAT_MIN_CHARS = 1500  # > 3 x 128 SmolLM2 tokens (~3.4 characters each) of text by the last turn
CHAT_TURNS = (3, 6)

NARRATE_QUESTIONS = (
    "Narrate the video: every event in order, with its time.",
    "What happens in the video, event by event? Give the time of each.",
    "List every event of the video in order with its time.",
    "Describe everything that happens, with timestamps.",
)
REVERSE_QUESTIONS = ("Now tell it backwards, from the last event to the first.",
                     "Say the events again in reverse order.")
STREAM_FIRST = ("What happens in this clip?", "Narrate this clip with times.")
STREAM_NEXT = ("And in this one?", "What happens next?", "Here is the next clip. What happens?")


def episodes_for(num_frames: int) -> int:
    """Episodes in a story of ``num_frames`` frames: 1 + log2(frames / 64), at least 1."""
    return max(1, 1 + int(math.floor(math.log2(max(num_frames, 1) / EPISODE_FRAMES))))


def seconds(frame: int) -> int:
    return frame // FPS


@dataclass(frozen=True)
class StoryEvent:
    """One narrated event. ``colour`` is the object's colour before the event, ``new_colour``
    after a colour change; ``scene`` marks the cut between two episodes."""

    frame: int
    type: str  # appear | move | colour | disappear | scene
    name: str = ""
    colour: str = ""
    direction: str | None = None
    new_colour: str | None = None
    episode: int = 0
    object: int = -1  # index in its episode's objects

    @property
    def time(self) -> int:
        return seconds(self.frame)

    @property
    def key(self) -> tuple:
        return (self.type, self.name, self.colour, self.direction, self.new_colour)

    def to_dict(self) -> dict:
        return {"frame": self.frame, "time": self.time, "type": self.type, "name": self.name,
                "colour": self.colour, "direction": self.direction, "new_colour": self.new_colour,
                "episode": self.episode}


def sentence(e: StoryEvent) -> str:
    at = f"At {e.time} s,"
    if e.type == "scene":
        return f"{at} the scene changes."
    if e.type == "appear":
        return f"{at} a {e.colour} {e.name} appears."
    subject = f"the {e.colour} {e.name}"
    if e.type == "move":
        return f"{at} {subject} moves {DIRECTION_PHRASES[e.direction]}."
    if e.type == "colour":
        return f"{at} {subject} turns {e.new_colour}."
    return f"{at} {subject} disappears."


def narration(events) -> str:
    return " ".join(sentence(e) for e in events)


@dataclass(frozen=True)
class Story:
    episodes: tuple[Scene, ...]

    def spans(self, num_frames: int) -> list[tuple[int, int]]:
        """[start, end) frames of each episode: equal parts, even lengths (2-frame patches)."""
        n = len(self.episodes)
        cuts = [2 * ((num_frames // 2) * i // n) for i in range(n)] + [num_frames]
        return list(zip(cuts[:-1], cuts[1:]))

    def events(self, num_frames: int, cuts: bool = True) -> list[StoryEvent]:
        """All events in time order; with ``cuts`` a ``scene`` event opens every episode
        after the first."""
        out = []
        for ep, (scene, (start, end)) in enumerate(zip(self.episodes, self.spans(num_frames))):
            if ep and cuts:
                out.append(StoryEvent(start, "scene", episode=ep))
            length = end - start
            for e in scene.events(length):
                o = scene.objects[e.object]
                before = o.colour_at(max(e.time - 1e-9, 0.0)) if e.type != "appear" else e.colour
                out.append(StoryEvent(
                    start + e.frame, e.type, e.name, before, e.direction,
                    e.colour if e.type == "colour" else None, ep, e.object))
        return out

    def render(self, num_frames: int, height: int = 112, width: int = 112) -> np.ndarray:
        return np.concatenate([scene.render(end - start, height, width)
                               for scene, (start, end) in zip(self.episodes, self.spans(num_frames))])


def random_story(rng: np.random.Generator, num_episodes: int) -> Story:
    return Story(tuple(random_scene(rng, objects=(2, 3)) for _ in range(num_episodes)))


@dataclass
class LongSample:
    """A long-answer sample: a story, its video length and the conversation's turns.

    ``turns``: ``{"question", "answer", "clip"}`` with ``clip`` the ``[start, end)`` frames of
    the video a user turn brings (``None``: no video in that turn)."""

    id: str
    task: str
    split: str
    index: int
    seed: int
    num_frames: int
    height: int
    width: int
    turns: list[dict]
    events: list[dict]
    story: Story = field(repr=False, compare=False)

    @property
    def visual_tokens(self) -> int:
        from sparrow_vllm.world.dataset import visual_tokens

        return visual_tokens(self.num_frames, self.height, self.width)

    def frames(self) -> np.ndarray:
        return self.story.render(self.num_frames, self.height, self.width)

    def clips(self) -> list[np.ndarray]:
        """The video of every turn that brings one, in turn order."""
        video = self.frames()
        return [video[t["clip"][0]:t["clip"][1]] for t in self.turns if t["clip"] is not None]

    def to_record(self) -> dict:
        return {"id": self.id, "task": self.task, "split": self.split, "index": self.index,
                "seed": self.seed, "num_frames": self.num_frames, "height": self.height,
                "width": self.width, "visual_tokens": self.visual_tokens, "turns": self.turns,
                "events": self.events}


def _unique_objects(events: list[StoryEvent]) -> list[StoryEvent]:
    """The appear events of objects whose (colour, name) at appearance is unique in the story."""
    appears = [e for e in events if e.type == "appear"]
    counts: dict = {}
    for e in appears:
        counts[(e.colour, e.name)] = counts.get((e.colour, e.name), 0) + 1
    return [e for e in appears if counts[(e.colour, e.name)] == 1]


def _object_story(events: list[StoryEvent], first: StoryEvent) -> str:
    own = [e for e in events if e.episode == first.episode and e.object == first.object and e is not first]
    subject = f"The {first.colour} {first.name}"
    if not own:
        return f"{subject} stays where it is until the scene changes."
    return " ".join([f"{subject} appears at {first.time} s."] + [sentence(e) for e in own])


def _chat_turns(events: list[StoryEvent], rng: np.random.Generator) -> list[dict]:
    turns = [{"question": NARRATE_QUESTIONS[int(rng.integers(len(NARRATE_QUESTIONS)))],
              "answer": narration(events), "clip": (0, None)}]
    objects = _unique_objects(events)
    rng.shuffle(objects)
    follow_ups = []
    for o in objects:
        follow_ups.append((f"You said a {o.colour} {o.name} appears at {o.time} s. What does it do after that?",
                           _object_story(events, o)))
    total = events[-1].time if events else 0
    for _ in range(2):
        t0 = int(rng.integers(0, max(total, 1) + 1))
        later = [e for e in events if e.time >= t0]
        if later:
            follow_ups.append((f"Repeat what happens from {t0} s on.", narration(later)))
    follow_ups.append((REVERSE_QUESTIONS[int(rng.integers(len(REVERSE_QUESTIONS)))], narration(events[::-1])))
    follow_ups.append(("Repeat your first answer.", turns[0]["answer"]))
    moves = [e for e in events if e.type == "move"]
    if moves:
        follow_ups.append(("Which moves did you mention? List them again.", narration(moves)))
    n_objects = sum(e.type == "appear" for e in events)
    follow_ups.append(("How many objects appear in all?", f"{n_objects} objects appear in all."))
    pending = [follow_ups[i] for i in rng.permutation(len(follow_ups))]
    size = lambda qa: len(qa[0]) + len(qa[1])  # noqa: E731
    chars = size((turns[0]["question"], turns[0]["answer"]))
    while pending and len(turns) < CHAT_TURNS[1] and (len(turns) < CHAT_TURNS[0] or chars < CHAT_MIN_CHARS):
        # in random order, unless the turns left would fall short of CHAT_MIN_CHARS: then the longest
        slots = CHAT_TURNS[1] - len(turns)
        behind = (CHAT_MIN_CHARS - chars) / slots > sum(map(size, pending)) / len(pending)
        q, a = pending.pop(max(range(len(pending)), key=lambda j: size(pending[j])) if behind else 0)
        turns.append({"question": q, "answer": a, "clip": None})
        chars += size((q, a))
    return turns


def make_long_sample(task: str, split: str, index: int, num_frames: int, height: int = 112,
                     width: int = 112) -> LongSample:
    """The ``task`` sample at ``index`` of ``split``: deterministic in (task, split, index,
    num_frames); a longer video holds more episodes."""
    from sparrow_vllm.world.dataset import MIN_FRAMES, _check_size, sample_seed

    if task not in LONG_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(LONG_TASKS)}")
    _check_size(height, width)
    n_ep = episodes_for(num_frames)
    least = 2 * EPISODE_FRAMES if task == "stream" else MIN_FRAMES  # a stream has >= 2 clips
    if num_frames < least:
        raise ValueError(f"a {task} sample needs at least {least} frames, got {num_frames}")
    seed = sample_seed(split, index)
    rng = np.random.default_rng([seed, LONG_TASKS.index(task) + 1])
    story = random_story(rng, n_ep)
    events = story.events(num_frames)
    if task == "narrate":
        q = NARRATE_QUESTIONS[int(rng.integers(len(NARRATE_QUESTIONS)))]
        turns = [{"question": q, "answer": narration(events), "clip": (0, num_frames)}]
    elif task == "chat":
        turns = _chat_turns(events, rng)
        turns[0]["clip"] = (0, num_frames)
    else:
        turns = []
        for ep, (start, end) in enumerate(story.spans(num_frames)):
            own = [e for e in story.events(num_frames, cuts=False) if e.episode == ep]
            pool = STREAM_NEXT if ep else STREAM_FIRST
            turns.append({"question": pool[int(rng.integers(len(pool)))], "answer": narration(own),
                          "clip": (start, end)})
    turns = [dict(t, clip=list(t["clip"]) if t["clip"] is not None else None) for t in turns]
    return LongSample(f"{task}-{split}-{index:07d}-{num_frames}f-{height}x{width}", task, split, index, seed,
                      num_frames, height, width, turns, [e.to_dict() for e in events], story)


# ---- scoring --------------------------------------------------------------------------------
_SENTENCE = re.compile(
    r"at (\d+) s, (?:(the) scene changes|an? ([a-z]+) ((?:digit )?[a-z0-9]+) appears"
    r"|the ([a-z]+) ((?:digit )?[a-z0-9]+) (?:moves (to the left|to the right|up|down)"
    r"|turns ([a-z]+)|disappears))\.")
_PHRASE_DIRECTION = {v: k for k, v in DIRECTION_PHRASES.items()}


def parse_narration(text: str) -> list[tuple[int, tuple]]:
    """``(time, key)`` of every sentence of ``text`` in the narration format."""
    out = []
    for m in _SENTENCE.finditer(" ".join(text.lower().split())):
        t = int(m.group(1))
        if m.group(2):
            out.append((t, ("scene", "", "", None, None)))
        elif m.group(3):
            out.append((t, ("appear", m.group(4), m.group(3), None, None)))
        else:
            kind = "move" if m.group(7) else "colour" if m.group(8) else "disappear"
            out.append((t, (kind, m.group(6), m.group(5), _PHRASE_DIRECTION.get(m.group(7)),
                            m.group(8) if kind == "colour" else None)))
    return out


def score_narration(reference: str, text: str, time_tolerance: int = 1) -> dict:
    """Event recall and precision of ``text`` against the reference narration (greedy
    one-to-one matching in order of time difference)."""
    ref, got = parse_narration(reference), parse_narration(text)
    used = [False] * len(ref)
    matched = 0
    for t, key in got:
        best = None
        for j, (rt, rkey) in enumerate(ref):
            if not used[j] and rkey == key and abs(rt - t) <= time_tolerance:
                if best is None or abs(rt - t) < abs(ref[best][0] - t):
                    best = j
        if best is not None:
            used[best] = True
            matched += 1
    return {"recall": matched / len(ref) if ref else float(not got),
            "precision": matched / len(got) if got else float(not ref),
            "events": len(ref), "said": len(got)}

