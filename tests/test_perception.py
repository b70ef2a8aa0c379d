"""Per-visual-token labels of the target's perception loss, checked against the rendered frames."""

import numpy as np
import pytest
import torch

from sparrow_vllm.target.perception import (COLOURS, IDENTITIES, IGNORE, MOTIONS, ObjectHeads, PerceptionHeads,
                                            object_instances,
                                            token_labels)
from sparrow_vllm.world import make_sample, visual_tokens
from sparrow_vllm.world.scene import BACKGROUND, PALETTE


@pytest.mark.parametrize("index,frames,per_token", [(0, 16, 2), (5, 16, 2), (11, 32, 2), (17, 64, 2), (3, 16, 1), (8, 32, 1)])
def test_token_labels_agree_with_the_rendered_pixels(index, frames, per_token):
    """Qwen2.5-VL's layout (2 frames a token) and LLaVA-OV's (1)."""
    s = make_sample("train", index, frames)
    ident, colour = token_labels(s, frames_per_token=per_token)
    assert ident.shape == colour.shape == (16 * frames // per_token,)
    if per_token == 2:
        assert len(ident) == visual_tokens(frames)
    assert ((ident > 0) == (colour > 0)).all() and ((ident == IGNORE) == (colour == IGNORE)).all()
    video = s.frames()
    T, H, W = video.shape[:3]
    cells = video.reshape(T // per_token, per_token, H // 28, 28, W // 28, 28, 3).transpose(0, 2, 4, 1, 3, 5, 6)
    cells = cells.reshape(len(ident), -1, 3)
    boxes = {}  # identity -> cells any object of that identity ever covers
    for o in s.scene.objects:
        x0, y0, x1, y1 = o.swept_box()
        boxes.setdefault(1 + IDENTITIES.index(o.label), []).append((x0 * W, y0 * H, x1 * W, y1 * H))
    assert (ident > 0).any() and (ident == 0).any()
    for t, (cell, i, c) in enumerate(zip(cells, ident, colour)):
        painted = (cell != BACKGROUND).any(-1)
        if i == 0:  # background: (almost) nothing painted
            assert painted.mean() < 0.02
        elif i > 0:  # the object's colour is what is painted there, most of it
            values, counts = np.unique(cell[painted], axis=0, return_counts=True)
            assert tuple(values[counts.argmax()]) == PALETTE[COLOURS[c - 1]]
            row, col = (t // (W // 28)) % (H // 28), t % (W // 28)
            cx, cy = col * 28 + 14, row * 28 + 14
            assert any(x0 - 14 <= cx <= x1 + 14 and y0 - 14 <= cy <= y1 + 14 for x0, y0, x1, y1 in boxes[i])


def test_perception_heads_score_object_tokens_and_check_the_layout():
    heads = PerceptionHeads(8)
    labels = (np.array([0, 3, IGNORE, len(IDENTITIES)]), np.array([0, 2, IGNORE, len(COLOURS)]))
    out = heads(torch.randn(4, 8), labels)
    assert out["loss"].requires_grad and out["loss"] > 0
    assert 0 <= out["identity_acc"] <= 1
    with pytest.raises(ValueError, match="3 visual tokens, 4 labels"):
        heads(torch.randn(3, 8), labels)


def test_motion_labels_need_tokens_of_two_frames(tmp_path):
    from sparrow_vllm.target.train_vision import train_vision

    with pytest.raises(ValueError, match="shows one frame: use --perception-level object"):
        train_vision(tmp_path / "run", steps=1, family="llava-onevision", perception_weight=0.3,
                     perception_level="object-motion")
    _, _, _, motion = object_instances(make_sample("train", 4, 16), frames_per_token=1)
    assert set(motion.tolist()) <= {0, IGNORE}  # one frame: nothing moves within a token


@pytest.mark.parametrize("arch", ["qwen2.5-vl", "llava-onevision"])
def test_video_tokens_are_what_the_lm_reads_in_the_labels_order(arch):
    """The adapter's tower-only tokens, the hook's tokens during a full forward and the LM's
    input embeddings at the video's positions are one tensor, as many as the labels."""
    from sparrow_vllm.families import get_family

    adapter = get_family(arch)
    model, _, processor = adapter.build_model(seed=0)  # a random tower: the layout, not what it learned
    s = make_sample("train", 3, 16)
    inputs = adapter.hf_inputs(processor, s.frames(), s.question)
    with torch.no_grad():
        alone = adapter.video_tokens(model, inputs)
        sink, embeds = [None], []
        handles = [adapter.capture_video_tokens(model, sink), model.model.language_model.register_forward_pre_hook(
            lambda m, args, kwargs: embeds.append(kwargs["inputs_embeds"]), with_kwargs=True)]
        model(**inputs)
        for h in handles:
            h.remove()
    labels, _ = token_labels(s, frames_per_token=adapter.frames_per_token)
    assert alone.shape == (len(labels), adapter.text_config(model.config).hidden_size)
    torch.testing.assert_close(sink[0], alone)
    at_video = embeds[0][0][torch.isin(inputs["input_ids"][0], torch.tensor(adapter.visual_token_ids(model.config)))]
    torch.testing.assert_close(at_video[:len(alone)], alone)  # LLaVA-OV: then its image_newline
    assert len(at_video) == adapter.visual_tokens(16)
    if arch == "llava-onevision":  # the pooling is a 2x2 mean: one token is one 28 px cell
        x = torch.randn(3, 64, 5)
        pooled = torch.nn.functional.avg_pool2d(x.view(3, 8, 8, 5).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        torch.testing.assert_close(model.model.apply_pooling(x), pooled.reshape(3, 16, 5))


@pytest.mark.parametrize("index,frames", [(0, 16), (5, 16), (12, 32)])
def test_object_instances_pool_the_tokens_the_object_covers(index, frames):
    s = make_sample("train", index, frames)
    weights, ident, colour, motion = object_instances(s)
    assert weights.shape == (len(ident), visual_tokens(frames)) and len(ident) == len(colour) == len(motion) > 0
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
    video = s.frames()
    T, H, W = video.shape[:3]
    per_step = (H // 28) * (W // 28)
    cells = video.reshape(T // 2, 2, H // 28, 28, W // 28, 28, 3).transpose(0, 2, 4, 1, 3, 5, 6).reshape(weights.shape[1], -1, 3)
    names = {IDENTITIES.index(o.label) for o in s.scene.objects}
    for w, i, c in zip(weights, ident, colour):
        tokens = np.flatnonzero(w)
        assert len(set(tokens // per_step)) == 1  # one temporal patch
        assert i in names
        if c == IGNORE:  # the colour changes within the patch
            continue
        # the heaviest token is mostly painted in the instance's colour
        cell = cells[tokens[w[tokens].argmax()]]
        painted = cell[(cell != BACKGROUND).any(-1)]
        values, counts = np.unique(painted, axis=0, return_counts=True)
        assert tuple(values[counts.argmax()]) == PALETTE[COLOURS[c]]


def test_object_motion_is_the_way_the_rendered_object_moves_within_its_patch():
    """Label vs pixels: the centroid of the instance's colour in the patch's two frames."""
    moving = 0
    for index in range(40):
        s = make_sample("train", index, 16)
        weights, _, colour, motion = object_instances(s)
        video = s.frames()
        T, H, W = video.shape[:3]
        steps = T // 2
        track = s.scene.track(T, H, W)
        for w, c, m in zip(weights, colour, motion):
            t = int(np.flatnonzero(w)[0]) // ((H // 28) * (W // 28))
            shown = track["colour"][2 * t:2 * t + 2][track["visible"][2 * t:2 * t + 2]]
            if m == IGNORE or c == IGNORE or (shown == c).sum() != 2:
                continue  # another object in the same colour would blur the centroid
            region = np.kron(w.reshape(steps, H // 28, W // 28)[t] > 0, np.ones((28, 28), bool))
            centre = []
            for f in (2 * t, 2 * t + 1):
                ys, xs = np.nonzero((video[f] == PALETTE[COLOURS[c]]).all(-1) & region)
                centre.append((xs.mean(), ys.mean()))
            (x0, y0), (x1, y1) = centre
            shift = (int(np.sign(round(x1 - x0))), int(np.sign(round(y1 - y0))))
            assert shift == ((0, 0) if m == 0 else MOTIONS[m - 1]), (index, t)
            moving += m > 0
    assert moving >= 10  # the check saw moving objects, not only still ones


def test_object_heads_pool_and_check_the_layout():
    heads = ObjectHeads(8)
    weights = np.zeros((2, 4), np.float32)
    weights[0, :2] = 0.5
    weights[1, 3] = 1.0
    instances = (weights, np.array([0, len(IDENTITIES) - 1]), np.array([1, len(COLOURS) - 1]), np.array([0, 3]))
    tokens = torch.randn(4, 8, requires_grad=True)
    out = heads(tokens, instances)
    out["loss"].backward()
    assert out["loss"] > 0 and tokens.grad[2].abs().sum() == 0 and tokens.grad[0].abs().sum() > 0
    assert "motion_acc" not in out
    with pytest.raises(ValueError, match="3 visual tokens, 4 in the instances"):
        heads(torch.randn(3, 8), instances)
    # the motion head adds its loss; its accuracy is over the moving instance (the second) only
    torch.manual_seed(0)
    with_motion = ObjectHeads(8, motion=True)
    pooled = torch.as_tensor(weights) @ with_motion.norm(tokens.detach())
    moved = with_motion(tokens.detach(), instances)
    assert float(moved["motion_acc"]) == float(with_motion.motion(pooled)[1].argmax() == 3)
    still = with_motion(tokens.detach(), instances[:3] + (np.array([0, IGNORE]),))
    assert float(moved["loss"]) != float(still["loss"]) and torch.isnan(still["motion_acc"])
    nothing = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    empty = heads(tokens, nothing)
    assert float(empty["loss"]) == 0.0
    heads(torch.randn(4, 8), nothing)["loss"].backward()  # a frozen tower's tokens, no object: still a loss


def test_perception_stage_options_are_checked_before_any_model_is_built(tmp_path):
    from sparrow_vllm.target.train_vision import train_vision

    with pytest.raises(ValueError, match="give perception_steps"):
        train_vision(tmp_path / "a", steps=1, perception_tower_lr=1e-3)
    with pytest.raises(ValueError, match="0 only for a perception stage alone"):
        train_vision(tmp_path / "b", steps=0, perception_steps=2)
    with pytest.raises(ValueError, match="give perception_tower_lr"):
        train_vision(tmp_path / "b", steps=1, perception_steps=2, perception_hold=1.0)
    with pytest.raises(ValueError, match="perception_level must be"):
        train_vision(tmp_path / "c", steps=1, perception_steps=2, perception_level="pixel")
    (tmp_path / "run").mkdir()
    torch.save({"visual": {}, "lora": {}, "heads": {"w": torch.zeros(1)}, "perception_level": "object", "step": 0},
               tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="perception level 'object'"):
        train_vision(tmp_path / "run", steps=4, perception_weight=0.3)


class _CellTower(torch.nn.Module):
    """A stand-in tower: one linear map of each merged token's pixels (2 frames x 28 x 28)."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.proj = torch.nn.Linear(2 * 28 * 28 * 3, hidden)

    def forward(self, pixels, grid_thw=None):
        return self.proj(pixels)


class _CellAdapter:
    def vision_module(self, model):
        return model

    def video_tokens(self, model, inputs):
        return model(inputs["pixel_values_videos"])

    def hf_inputs(self, processor, frames, question):
        T, H, W = frames.shape[:3]
        cells = frames.reshape(T // 2, 2, H // 28, 28, W // 28, 28, 3).transpose(0, 2, 4, 1, 3, 5, 6)
        return {"pixel_values_videos": torch.as_tensor(cells.reshape(-1, 2 * 28 * 28 * 3), dtype=torch.float32) / 255,
                "video_grid_thw": None}


@pytest.mark.parametrize("tower_lr", [0.0, 1e-2])
def test_the_perception_warm_up_trains_the_tower_only_when_asked(tower_lr):
    from sparrow_vllm.target.perception import warm_up_heads

    torch.manual_seed(0)
    tower, heads = _CellTower(), ObjectHeads(8)
    before = [p.detach().clone() for p in tower.parameters()]
    heads_before = [p.detach().clone() for p in heads.parameters()]
    records = warm_up_heads(tower, _CellAdapter(), None, heads, steps=3, batch=2, lr=1e-2,
                            sample_at=lambda step, i: make_sample("train", 2 * step + i, 16),
                            labels_of=object_instances, tower_lr=tower_lr)
    assert records[-1]["heads_step"] == 3 and np.isfinite(records[-1]["loss"])
    moved = any(not torch.equal(a, b) for a, b in zip(before, tower.parameters()))
    assert moved == bool(tower_lr)
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, heads.parameters()))


def test_a_held_perception_stage_moves_the_tokens_less_and_still_trains_the_tower():
    """``tower_hold``: the stage's tokens stay nearer what the tower made before it (the LM's
    interface, here on a clip the stage never saw) and the tower still moves; the hold is logged."""
    from sparrow_vllm.target.perception import warm_up_heads

    clip = _CellAdapter().hf_inputs(None, make_sample("val", 0, 16).frames(), None)
    drift = {}
    for hold in (0.0, 10.0):
        torch.manual_seed(0)
        tower, heads = _CellTower(), ObjectHeads(8)
        with torch.no_grad():
            start = tower(clip["pixel_values_videos"])
        records = warm_up_heads(tower, _CellAdapter(), None, heads, steps=6, batch=2, lr=1e-2,
                                sample_at=lambda step, i: make_sample("train", 2 * step + i, 16),
                                labels_of=object_instances, tower_lr=5e-2, tower_hold=hold)
        with torch.no_grad():
            drift[hold] = float((tower(clip["pixel_values_videos"]) - start).norm() / start.norm())
        assert ("hold" in records[-1]) == bool(hold) and np.isfinite(records[-1]["loss"])
    assert 0 < drift[10.0] < 0.5 * drift[0.0], drift


@pytest.mark.parametrize("arch,level", [("qwen2.5-vl", "object-motion"), ("llava-onevision", "object")])
def test_a_perception_stage_then_an_lm_step_with_the_loss_on_both_families(tmp_path, arch, level):
    """The stage (tower and heads on tower-only forwards), then one LM step whose perception loss
    reads the tokens caught in the LM's own forward: both log accuracies, and the tower moves."""
    import json

    from safetensors.torch import load_file

    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.train_vision import train_vision

    out = train_vision(tmp_path / arch, steps=1, accum=1, family=arch, perception_weight=1.0, perception_steps=2,
                       perception_batch=2, perception_level=level, perception_tower_lr=1e-3)
    records = [json.loads(line) for line in (tmp_path / arch / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["heads_step"] == 2 and np.isfinite(records[0]["loss"])
    lm_step = records[-1]
    assert lm_step["step"] == 1 and 0 <= lm_step["perception_identity_acc"] <= 1
    adapter = get_family(arch)
    model, _, _ = adapter.build_model(seed=0)  # the seeded start the run began from
    before = adapter.vision_parts_of(model)
    after = load_file(str(out))
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
