"""SparrowWorld scenes: objects with timelines, their events, and rendering to frames.

A scene does not depend on resolution or length: positions and sizes are fractions of the
frame and times are fractions of the video in [0, 1). `Scene.events(T)` and
`Scene.render(T, H, W)` map it onto a concrete video, so one seed tells the same story at
16 frames or at 3,200 (where the same motion is just slower).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

BACKGROUND = (16, 16, 24)
# Few, saturated, far-apart colours: a tiny ViT must tell them apart after patchify.
PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 255),
    "yellow": (250, 220, 40),
    "white": (245, 245, 245),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
DIGITS = tuple("0123456789")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Times are fractions of the video. At 16 frames MIN_GAP is ~2 frames (>= 1 after rounding
# down), so a state usually fills a temporal patch (2 frames) of the target's vision tower.
MIN_GAP = 0.12  # between two events of one object
MIN_VISIBLE = 0.20  # before a disappearance: the last state must be seen
MOVE_DURATION = (0.12, 0.25)
LAST_EVENT = 0.85  # the final state stays on screen for the last 15% of the video
SIZE_RANGE = (0.25, 0.34)  # of min(H, W): 28-38 px at 112x112
DISTANCE_RANGE = (0.20, 0.40)
EDGE = 0.02  # margin to the frame border
SEPARATION = 0.04  # min gap between the areas two objects ever cover


def display_name(label: str) -> str:
    """'circle' -> 'circle', '7' -> 'digit 7' (the noun phrase used in questions/answers)."""
    return label if label in SHAPES else f"digit {label}"


def frame_of(time: float, num_frames: int) -> int:
    """Frame index at which an event at normalised `time` happens."""
    return min(num_frames - 1, int(time * num_frames))


@dataclass(frozen=True)
class ObjectSpec:
    """One object and its timeline. Coordinates: centre as fraction of W / H; size as a
    fraction of min(H, W); times as fractions of the video. Optional events are None."""

    label: str  # shape name or digit character
    colour: str
    size: float
    x: float
    y: float
    appear: float
    direction: str | None = None
    distance: float = 0.0
    move_start: float | None = None
    move_end: float | None = None
    change_at: float | None = None
    new_colour: str | None = None
    disappear: float | None = None

    @property
    def name(self) -> str:
        return display_name(self.label)

    def colour_at(self, time: float) -> str:
        if self.change_at is not None and time >= self.change_at:
            return self.new_colour
        return self.colour

    def swept_box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): everything the object ever covers (conservative for H != W)."""
        dx, dy = DIRECTIONS[self.direction] if self.direction else (0, 0)
        xs = (self.x, self.x + dx * self.distance)
        ys = (self.y, self.y + dy * self.distance)
        h = self.size / 2
        return min(xs) - h, min(ys) - h, max(xs) + h, max(ys) + h

    def size_px(self, height: int, width: int) -> int:
        return int(round(self.size * min(height, width)))


@dataclass(frozen=True)
class Event:
    """A ground-truth event. `colour` is the object's colour after the event."""

    frame: int
    type: str  # appear | move | colour | disappear
    object: int  # index into Scene.objects
    name: str
    colour: str
    time: float
    direction: str | None = None
    end_frame: int | None = None  # move: frame at which the object reaches its target

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]

    def events(self, num_frames: int) -> list[Event]:
        """All events in time order (ties: object order) for a video of `num_frames`."""
        items = []
        for k, o in enumerate(self.objects):
            f = lambda t: frame_of(t, num_frames)  # noqa: E731
            items.append(Event(f(o.appear), "appear", k, o.name, o.colour, o.appear))
            if o.direction:
                items.append(Event(f(o.move_start), "move", k, o.name, o.colour_at(o.move_start),
                                   o.move_start, o.direction, f(o.move_end)))
            if o.change_at is not None:
                items.append(Event(f(o.change_at), "colour", k, o.name, o.new_colour, o.change_at))
            if o.disappear is not None:
                items.append(Event(f(o.disappear), "disappear", k, o.name,
                                   o.colour_at(o.disappear), o.disappear))
        return sorted(items, key=lambda e: (e.time, e.object))

    def track(self, num_frames: int, height: int, width: int) -> dict[str, np.ndarray]:
        """Per-frame state, each array [T, n_objects]: visible (bool), top, left (int px of
        the object's box corner), colour (int index into COLOURS)."""
        t, n = np.arange(num_frames), len(self.objects)
        out = {"visible": np.zeros((num_frames, n), bool),
               "top": np.zeros((num_frames, n), np.int64),
               "left": np.zeros((num_frames, n), np.int64),
               "colour": np.zeros((num_frames, n), np.int64)}
        for k, o in enumerate(self.objects):
            s = o.size_px(height, width)
            end = num_frames if o.disappear is None else frame_of(o.disappear, num_frames)
            out["visible"][:, k] = (t >= frame_of(o.appear, num_frames)) & (t < end)
            progress = np.zeros(num_frames)
            if o.direction:
                m0, m1 = frame_of(o.move_start, num_frames), frame_of(o.move_end, num_frames)
                progress = np.clip((t - m0) / max(m1 - m0, 1), 0.0, 1.0)
            dx, dy = DIRECTIONS[o.direction] if o.direction else (0, 0)
            cx = (o.x + dx * o.distance * progress) * width
            cy = (o.y + dy * o.distance * progress) * height
            out["left"][:, k] = np.clip(np.round(cx - s / 2), 0, width - s)
            out["top"][:, k] = np.clip(np.round(cy - s / 2), 0, height - s)
            out["colour"][:, k] = COLOURS.index(o.colour)
            if o.change_at is not None:
                out["colour"][t >= frame_of(o.change_at, num_frames), k] = COLOURS.index(o.new_colour)
        return out

    def render(self, num_frames: int, height: int = 112, width: int = 112) -> np.ndarray:
        """Frames, uint8 [T, H, W, 3]. Consecutive frames with identical object state are
        painted in one slice assignment, so slow long videos cost little more than short."""
        frames = np.empty((num_frames, height, width, 3), np.uint8)
        frames[:] = BACKGROUND
        if not self.objects:
            return frames
        st = self.track(num_frames, height, width)
        state = np.concatenate([st["visible"], st["top"], st["left"], st["colour"]], axis=1)
        starts = np.concatenate([[0], np.flatnonzero(np.any(state[1:] != state[:-1], axis=1)) + 1])
        ends = np.append(starts[1:], num_frames)
        palette = np.array([PALETTE[c] for c in COLOURS], np.uint8)
        for k, o in enumerate(self.objects):
            s = o.size_px(height, width)
            mask = _mask(o.label, s)
            for t0, t1 in zip(starts, ends):
                if st["visible"][t0, k]:
                    y, x = st["top"][t0, k], st["left"][t0, k]
                    # objects never overlap (see random_scene), so paint order is irrelevant
                    frames[t0:t1, y:y + s, x:x + s][:, mask] = palette[st["colour"][t0, k]]
        return frames


# 3x5 bitmap digits, scaled up to the object box: big and blocky (strokes ~size/5 px).
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111",
}


@lru_cache(maxsize=None)
def _mask(label: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask of a shape or digit, centred in its box."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if label == "circle":
        mask = (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    elif label == "square":
        mask = np.ones((size, size), bool)
    elif label == "triangle":  # apex at the top centre, base along the bottom
        mask = np.abs(xx - c) <= yy / 2
    else:
        glyph = np.array([int(b) for b in _FONT[label]], bool).reshape(5, 3)
        gw = (4 * size) // 5  # wider than 3:5 so vertical strokes are as thick as horizontal ones
        off = (size - gw) // 2
        mask = np.zeros((size, size), bool)
        rows = (np.arange(size) * 5) // size
        cols = (np.arange(gw) * 3) // gw
        mask[:, off:off + gw] = glyph[rows][:, cols]
    mask.setflags(write=False)
    return mask


def _pick(rng: np.random.Generator, options, exclude=()) -> str:
    options = [o for o in options if o not in exclude]
    return str(options[int(rng.integers(len(options)))])


def _separated(a: tuple, b: tuple) -> bool:
    return (a[2] + SEPARATION <= b[0] or b[2] + SEPARATION <= a[0]
            or a[3] + SEPARATION <= b[1] or b[3] + SEPARATION <= a[1])


def _gap_before(step: str) -> float:
    return MIN_VISIBLE if step == "disappear" else MIN_GAP


def _time_needed(steps: list[str], move_duration: float) -> float:
    return sum(map(_gap_before, steps)) + (move_duration if "move" in steps else 0.0)


def _random_object(rng, label: str, appear: float, placed: list[ObjectSpec]) -> ObjectSpec | None:
    """One object appearing at `appear`, or None if its timeline or position does not fit."""
    colour = _pick(rng, COLOURS)
    size = float(rng.uniform(*SIZE_RANGE))
    steps = [s for s, p in (("move", 0.6), ("colour", 0.45)) if rng.random() < p]
    rng.shuffle(steps)
    if rng.random() < 0.25:
        steps.append("disappear")  # always last: nothing happens to an invisible object
    duration = float(rng.uniform(*MOVE_DURATION))
    while steps and appear + _time_needed(steps, duration) > LAST_EVENT:
        steps.pop()  # late objects get shorter stories instead of failing the scene
    slack = LAST_EVENT - appear - _time_needed(steps, duration)
    if slack < 0:
        return None
    fields: dict = {}
    t = appear
    for step, extra in zip(steps, rng.dirichlet(np.ones(len(steps) + 1)) * slack):
        t += _gap_before(step) + float(extra)
        if step == "move":
            fields.update(direction=_pick(rng, DIRECTIONS), move_start=t, move_end=t + duration,
                          distance=float(rng.uniform(*DISTANCE_RANGE)))
            t += duration
        elif step == "colour":
            fields.update(change_at=t, new_colour=_pick(rng, COLOURS, exclude=(colour,)))
        else:
            fields.update(disappear=t)
    dx, dy = DIRECTIONS[fields["direction"]] if "direction" in fields else (0, 0)
    dist = fields.get("distance", 0.0)
    lo, hi = EDGE + size / 2, 1 - EDGE - size / 2
    for _ in range(50):  # rejection-sample a start so the whole path avoids earlier objects
        x = float(rng.uniform(lo - min(dx * dist, 0), hi - max(dx * dist, 0)))
        y = float(rng.uniform(lo - min(dy * dist, 0), hi - max(dy * dist, 0)))
        obj = ObjectSpec(label, colour, size, x, y, appear, **fields)
        if all(_separated(obj.swept_box(), p.swept_box()) for p in placed):
            return obj
    return None


def random_scene(rng: np.random.Generator, max_tries: int = 1000, objects: tuple[int, ...] = (1, 2, 3)) -> Scene:
    """1-3 objects (``objects``: the counts allowed) with distinct labels, distinct appearance
    times (in object order), and disjoint swept areas. Deterministic given the generator state."""
    counts = {1: 0.3, 2: 0.4, 3: 0.3}
    weights = np.array([counts[n] for n in objects])
    for _ in range(max_tries):
        n = int(rng.choice(list(objects), p=weights / weights.sum()))
        placed: list[ObjectSpec] = []
        appear = float(rng.uniform(0.0, 0.1))
        for _k in range(n):
            # shapes and digits equally likely, though there are 3 shapes and 10 digits
            pool = SHAPES if rng.random() < 0.5 else DIGITS
            label = _pick(rng, pool, exclude=[p.label for p in placed])
            obj = _random_object(rng, label, appear, placed)
            if obj is None:
                break
            placed.append(obj)
            appear = obj.appear + MIN_GAP + float(rng.uniform(0.0, 0.1))
        else:
            return Scene(tuple(placed))
    raise RuntimeError("random_scene: no valid scene found")
