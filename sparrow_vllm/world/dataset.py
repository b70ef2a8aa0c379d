"""SparrowWorld samples, splits, visual-token budgets, and dataset directories.

Layout of a dataset directory::

    DIR/samples.jsonl          one JSON record per sample (see Sample.to_record)
    DIR/videos/<id>.npy        uint8 [T, H, W, 3]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparrow_vllm.world.qa import kind_for_index, make_qa
from sparrow_vllm.world.scene import Scene, random_scene

# Disjoint seed ranges: seed = SPLITS[split] + index, index < SPLIT_SIZE.
SPLIT_SIZE = 1_000_000
SPLITS = {"train": 0, "val": SPLIT_SIZE, "test": 2 * SPLIT_SIZE}
MIN_FRAMES = 16  # below this, events of one object could share a frame
PATCH = 28  # Qwen2.5-VL: 14 px patches, 2x2 spatial merge -> one token per 28x28 px
TEMPORAL_PATCH = 2


def _check_size(height: int, width: int) -> None:
    if height % PATCH or width % PATCH or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of {PATCH}, "
                         f"got {height}x{width}")


def visual_tokens(num_frames: int, height: int = 112, width: int = 112) -> int:
    """LM tokens the Qwen2.5-VL vision tower makes of a [num_frames, height, width] video."""
    _check_size(height, width)
    return math.ceil(num_frames / TEMPORAL_PATCH) * (height // PATCH) * (width // PATCH)


def frames_for_visual_tokens(tokens: int, height: int = 112, width: int = 112) -> int:
    """Fewest frames (even) whose video has at least `tokens` visual tokens."""
    per_step = visual_tokens(TEMPORAL_PATCH, height, width)
    return TEMPORAL_PATCH * max(1, math.ceil(tokens / per_step))


def sample_seed(split: str, index: int) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if not 0 <= index < SPLIT_SIZE:
        raise ValueError(f"index must be in [0, {SPLIT_SIZE}), got {index}")
    return SPLITS[split] + index


@dataclass
class Sample:
    """A (video, question, answer) sample. The video is rendered on demand by frames()."""

    id: str
    split: str
    index: int
    seed: int
    num_frames: int
    height: int
    width: int
    kind: str
    question: str
    answer: str
    answer_facts: list[str]
    events: list[dict]  # Event.to_dict() in time order, frames for this num_frames
    scene: Scene = field(repr=False, compare=False)
    # index in scene.objects of the object the question is about (None: count, describe);
    # a training label (target/grounding.py), not part of the written record
    subject: int | None = field(default=None, repr=False, compare=False)

    @property
    def visual_tokens(self) -> int:
        return visual_tokens(self.num_frames, self.height, self.width)

    def frames(self) -> np.ndarray:
        """uint8 [num_frames, height, width, 3]; identical on every call for a seed."""
        return self.scene.render(self.num_frames, self.height, self.width)

    def to_record(self) -> dict:
        return {
            "id": self.id, "split": self.split, "index": self.index, "seed": self.seed,
            "num_frames": self.num_frames, "height": self.height, "width": self.width,
            "visual_tokens": self.visual_tokens, "kind": self.kind,
            "question": self.question, "answer": self.answer,
            "answer_facts": list(self.answer_facts), "events": self.events,
            "video": f"videos/{self.id}.npy",
        }


def make_sample(split: str, index: int, num_frames: int, height: int = 112,
                width: int = 112) -> Sample:
    """The sample at `index` of `split`. Story and QA depend only on (split, index); the
    length and resolution only change how the story is laid out in frames."""
    _check_size(height, width)
    if num_frames < MIN_FRAMES:
        raise ValueError(f"num_frames must be >= {MIN_FRAMES}, got {num_frames}")
    seed = sample_seed(split, index)
    rng = np.random.default_rng(seed)
    kind = kind_for_index(index)
    for _ in range(1000):  # draw scenes until one can answer this kind of question
        scene = random_scene(rng)
        qa = make_qa(scene, kind, rng)
        if qa is not None:
            break
    else:
        raise RuntimeError(f"no scene for a {kind!r} question (seed {seed})")
    return Sample(
        id=f"{split}-{index:07d}-{num_frames}f-{height}x{width}", split=split, index=index,
        seed=seed, num_frames=num_frames, height=height, width=width, kind=kind,
        question=qa.question, answer=qa.answer, answer_facts=list(qa.facts),
        events=[e.to_dict() for e in scene.events(num_frames)], scene=scene, subject=qa.target,
    )


def _video_complete(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        video = np.load(path, mmap_mode="r")  # header only; fails if the file is truncated
    except (OSError, ValueError):
        return False
    return video.shape == shape and video.dtype == np.uint8


def _write_jsonl(path: Path, records) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def write_dataset(out_dir, split: str, n: int, num_frames: int, height: int = 112,
                  width: int = 112, start_index: int = 0, progress: bool = False,
                  flush_every: int = 64) -> dict[str, int]:
    """Write samples start_index .. start_index+n-1 of `split` into `out_dir`.

    Resumable: a video already on disk with the right shape is not rendered again, and
    samples.jsonl keeps records of earlier runs (other splits or ranges), replacing only
    records with the same id. Files are written under a temporary name and then renamed,
    so an interrupted run never leaves a partial file under its final name.
    Returns {"written": videos rendered now, "skipped": videos already complete}.
    """
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jsonl = out / "samples.jsonl"
    records = {r["id"]: r for r in load_dataset(out)} if jsonl.exists() else {}
    stats = {"written": 0, "skipped": 0}
    indices = range(start_index, start_index + n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"world {split}", unit="video")
    for i, index in enumerate(indices):
        sample = make_sample(split, index, num_frames, height, width)
        record = sample.to_record()
        path = out / record["video"]
        if _video_complete(path, (num_frames, height, width, 3)):
            stats["skipped"] += 1
        else:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
                np.save(f, sample.frames())
            os.replace(tmp, path)
            stats["written"] += 1
        records[sample.id] = record
        if flush_every and (i + 1) % flush_every == 0:  # keep records in step on long runs
            _write_jsonl(jsonl, records.values())
    _write_jsonl(jsonl, records.values())
    return stats


def load_dataset(data_dir) -> Iterator[dict]:
    """Yield the records of DIR/samples.jsonl in file order."""
    with open(Path(data_dir) / "samples.jsonl") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_video(data_dir, record: dict, mmap: bool = False) -> np.ndarray:
    """uint8 [T, H, W, 3] video of `record` (memory-mapped if `mmap`)."""
    return np.load(Path(data_dir) / record["video"], mmap_mode="r" if mmap else None)
