"""Per-visual-token labels of the target's perception loss, checked against the rendered frames."""

import numpy as np
import pytest
import torch

from sparrow_vllm.target.perception import COLOURS, IDENTITIES, IGNORE, PerceptionHeads, token_labels
from sparrow_vllm.world import make_sample, visual_tokens
from sparrow_vllm.world.scene import BACKGROUND, PALETTE


@pytest.mark.parametrize("index,frames", [(0, 16), (5, 16), (11, 32), (17, 64)])
def test_token_labels_agree_with_the_rendered_pixels(index, frames):
    s = make_sample("train", index, frames)
    ident, colour = token_labels(s)
    assert ident.shape == colour.shape == (visual_tokens(frames),)
    assert ((ident > 0) == (colour > 0)).all() and ((ident == IGNORE) == (colour == IGNORE)).all()
    video = s.frames()
    T, H, W = video.shape[:3]
    cells = video.reshape(T // 2, 2, H // 28, 28, W // 28, 28, 3).transpose(0, 2, 4, 1, 3, 5, 6).reshape(len(ident), -1, 3)
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


def test_the_perception_loss_is_for_qwen25vl_only(tmp_path):
    from sparrow_vllm.target.train_vision import train_vision

    with pytest.raises(ValueError, match="Qwen2.5-VL's visual token layout"):
        train_vision(tmp_path / "run", steps=1, family="llava-onevision", perception_weight=0.3)
