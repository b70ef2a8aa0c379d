"""Questions and template answers about a SparrowWorld scene, and answer scoring.

Every answer is one or more fixed-template sentences ending with a period, so the target
LM has to emit several tokens whose content words depend on the video.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sparrow_vllm.world.scene import COLOURS, DIGITS, DIRECTIONS, SHAPES, Event, Scene

# kind -> share of samples. Multiples of 1/20: KIND_SCHEDULE realises them exactly.
QUESTION_KINDS = {
    "identify": 0.15,  # What is the red object?
    "colour": 0.15,  # What colour is the circle?
    "direction": 0.15,  # Which direction does the circle move?
    "describe": 0.15,  # Describe the video.
    "count": 0.10,  # How many objects appear in the video?
    "recolour": 0.10,  # What colour does the circle turn into?
    "first": 0.10,  # Which object appears first?
    "disappear": 0.10,  # Which object disappears?
}
_ROUND = ("identify", "colour", "direction", "describe", "count", "recolour", "first", "disappear")
# Interleaved so any 20 consecutive indices hold exactly the proportions above.
KIND_SCHEDULE = _ROUND + _ROUND + _ROUND[:4]

COUNT_WORDS = ("zero", "one", "two", "three")
DIRECTION_PHRASES = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
# Content words: the facts of an answer, and what a wrong answer would get wrong.
VOCABULARY = frozenset(COLOURS + SHAPES + DIGITS + tuple(DIRECTIONS) + COUNT_WORDS[1:]
                       + ("disappears",))


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str
    facts: tuple[str, ...]  # lowercase keywords a correct answer must contain
    target: int | None  # index of the object asked about, if any


def kind_for_index(index: int) -> str:
    return KIND_SCHEDULE[index % len(KIND_SCHEDULE)]


def normalize(text: str) -> str:
    """Lowercase, collapse whitespace."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def keywords(text: str) -> tuple[str, ...]:
    """Content words of `text` in first-occurrence order."""
    return tuple(dict.fromkeys(w for w in words(text) if w in VOCABULARY))


def _article(name: str) -> str:
    return f"the {name}" if name.startswith("digit") else f"a {name}"


def _sentence(e: Event, subject: str) -> str:
    if e.type == "appear":
        return f"A {e.colour} {e.name} appears."
    if e.type == "move":
        return f"{subject} moves {DIRECTION_PHRASES[e.direction]}."
    if e.type == "colour":
        return f"{subject} turns {e.colour}."
    return f"{subject} disappears."


def describe(scene: Scene) -> str:
    """One sentence per event, in time order: 'A red circle appears. It moves up.'"""
    out, prev = [], None
    for e in scene.events(1000):  # order does not depend on length (sorted by time)
        out.append(_sentence(e, "It" if e.object == prev else f"The {e.name}"))
        prev = e.object
    return " ".join(out)


def make_qa(scene: Scene, kind: str, rng: np.random.Generator) -> QA | None:
    """A question of `kind` about `scene`, or None if the scene cannot answer it
    unambiguously (the caller then draws another scene)."""
    objs = scene.objects
    pick = lambda ks: ks[int(rng.integers(len(ks)))] if ks else None  # noqa: E731
    if kind == "identify":
        # the colour must name one object: never changes, and no other object ever has it
        def unique(k):
            o = objs[k]
            others = {c for j, p in enumerate(objs) if j != k for c in (p.colour, p.new_colour)}
            return o.change_at is None and o.colour not in others
        k = pick([k for k in range(len(objs)) if unique(k)])
        if k is None:
            return None
        o = objs[k]
        q, a = f"What is the {o.colour} object?", f"The {o.colour} object is {_article(o.name)}."
    elif kind == "colour":
        k = pick([k for k, o in enumerate(objs) if o.change_at is None])
        if k is None:
            return None
        o = objs[k]
        q, a = f"What colour is the {o.name}?", f"The {o.name} is {o.colour}."
    elif kind == "direction":
        k = pick([k for k, o in enumerate(objs) if o.direction])
        if k is None:
            return None
        o = objs[k]
        q = f"Which direction does the {o.name} move?"
        a = f"The {o.name} moves {DIRECTION_PHRASES[o.direction]}."
    elif kind == "recolour":
        k = pick([k for k, o in enumerate(objs) if o.change_at is not None])
        if k is None:
            return None
        o = objs[k]
        q, a = f"What colour does the {o.name} turn into?", f"The {o.name} turns {o.new_colour}."
    elif kind == "count":
        k, n = None, len(objs)
        q = "How many objects appear in the video?"
        a = f"{COUNT_WORDS[n].capitalize()} object{'s' if n > 1 else ''} appear{'' if n > 1 else 's'}."
    elif kind == "first":
        if len(objs) < 2:
            return None
        k, o = 0, objs[0]  # objects are generated in order of appearance
        q, a = "Which object appears first?", f"The {o.colour} {o.name} appears first."
    elif kind == "disappear":
        gone = [k for k, o in enumerate(objs) if o.disappear is not None]
        if len(gone) != 1:
            return None
        k, o = gone[0], objs[gone[0]]
        q = "Which object disappears?"
        a = f"The {o.colour_at(o.disappear)} {o.name} disappears."
    elif kind == "describe":
        if not 2 <= len(scene.events(1000)) <= 4:  # keep it to 2-4 sentences
            return None
        k, q, a = None, "Describe the video.", describe(scene)
    else:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {list(QUESTION_KINDS)}")
    return QA(kind, q, a, keywords(a), k)


def _reference(sample) -> tuple[str, tuple[str, ...]]:
    if isinstance(sample, Mapping):
        return sample["answer"], tuple(sample["answer_facts"])
    return sample.answer, tuple(sample.answer_facts)


def score_answer(sample, text: str, mode: str = "exact") -> bool:
    """Is `text` a correct answer for `sample` (a Sample or a dataset record)?

    exact: same text as the reference after lowercasing and collapsing whitespace.
    facts: every answer fact appears as a word, and no content word (colour, shape, digit,
    direction, count, 'disappears') appears that the reference does not contain.
    form: the reference's sentences with any content words in their places (an answer that
    keeps to the question's template, right or wrong: does the model still make sense?).
    """
    answer, facts = _reference(sample)
    if mode == "exact":
        return normalize(text) == normalize(answer)
    if mode == "facts":
        got = set(words(text))
        return set(facts) <= got and not (got & VOCABULARY) - set(keywords(answer))
    if mode == "form":
        return _form(text) == _form(answer)
    raise ValueError(f"unknown mode {mode!r}; expected 'exact', 'facts' or 'form'")


def _form(text: str) -> list[str]:
    return ["_" if w in VOCABULARY else w for w in words(text)]
