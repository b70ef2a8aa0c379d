"""SparrowWorld: a deterministic procedural video world (numpy only).

Seeded scenes of 1-3 big flat-coloured shapes / digits on a dark background that appear,
move, change colour and disappear; rendered to uint8 videos [T, H, W, 3] of any length,
with ground-truth events and template (question, answer) samples about them.
"""

from sparrow_vllm.world.dataset import (
    MIN_FRAMES,
    SPLIT_SIZE,
    SPLITS,
    Sample,
    frames_for_visual_tokens,
    load_dataset,
    load_video,
    make_sample,
    sample_seed,
    visual_tokens,
    write_dataset,
)
from sparrow_vllm.world.qa import (
    KIND_SCHEDULE,
    QA,
    QUESTION_KINDS,
    describe,
    keywords,
    kind_for_index,
    make_qa,
    score_answer,
)
from sparrow_vllm.world.scene import (
    BACKGROUND,
    COLOURS,
    DIGITS,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    Event,
    ObjectSpec,
    Scene,
    random_scene,
)

__all__ = [
    "BACKGROUND", "COLOURS", "DIGITS", "DIRECTIONS", "PALETTE", "SHAPES",
    "Event", "ObjectSpec", "Scene", "random_scene",
    "KIND_SCHEDULE", "QA", "QUESTION_KINDS", "describe", "keywords", "kind_for_index",
    "make_qa", "score_answer",
    "MIN_FRAMES", "SPLIT_SIZE", "SPLITS", "Sample", "frames_for_visual_tokens", "load_dataset",
    "load_video", "make_sample", "sample_seed", "visual_tokens", "write_dataset",
]
