"""The grounding loss (target/grounding.py): which tokens it points at, and what it computes."""

import math

import numpy as np
import pytest
import torch

from sparrow_vllm.target.grounding import Grounding, subject_tokens
from sparrow_vllm.world import make_sample, visual_tokens
from sparrow_vllm.world.qa import kind_for_index
from sparrow_vllm.world.scene import PALETTE


def test_the_subject_is_the_object_the_question_names():
    seen = set()
    for index in range(80):
        s = make_sample("train", index, 16)
        if s.kind in ("count", "describe"):
            assert s.subject is None and subject_tokens(s) is None
            continue
        o = s.scene.objects[s.subject]
        seen.add(s.kind)
        if s.kind in ("colour", "direction", "recolour"):
            assert f"the {o.name}" in s.question.lower()
        elif s.kind == "identify":
            assert o.colour in s.question and o.name in s.answer
        else:  # first, disappear: the answer names it
            assert o.name in s.answer
    assert seen == {kind_for_index(i) for i in range(20)} - {"count", "describe"}


@pytest.mark.parametrize("index", [0, 8, 16, 40])  # identify questions: a colour only the subject has
def test_subject_tokens_are_where_the_subject_is_painted(index):
    s = make_sample("train", index, 16)
    assert s.kind == "identify"
    mask = subject_tokens(s)
    assert mask.shape == (visual_tokens(16),) and mask.any() and not mask.all()
    video = s.frames()
    T, H, W = video.shape[:3]
    cells = video.reshape(T // 2, 2, H // 28, 28, W // 28, 28, 3).transpose(0, 2, 4, 1, 3, 5, 6)
    cells = cells.reshape(len(mask), -1, 3)
    share = (cells == PALETTE[s.scene.objects[s.subject].colour]).all(-1).mean(-1)
    # the subject covers >= 15% of a token it marks; other objects may hide a part of it
    assert share[mask].min() > 0.05 and share[~mask].max() < 0.15


class _Layer:
    layer_idx, scaling = 3, 0.25


def test_the_loss_is_minus_log_the_attention_mass_on_the_subject():
    torch.manual_seed(0)
    T, d = 12, 8
    query = torch.randn(1, 6, T, d, requires_grad=True)  # 6 query heads sharing 2 kv heads
    key = torch.randn(1, 2, T, d)
    is_visual = torch.zeros(T, dtype=torch.bool)
    is_visual[2:8] = True
    subject = np.array([False, True, True, False, False, True])  # visual tokens 1, 2, 5 -> positions 3, 4, 7
    labels = torch.full((T,), -100)
    labels[9:] = 7  # positions 8, 9, 10 predict answer tokens
    bias = is_visual.float() * math.log(4.0)
    g = Grounding(layer=3, head=4)
    g.capture(type("Other", (), {"layer_idx": 2, "scaling": 1.0})(), query, key)  # another layer: ignored
    assert g.query is None
    g.capture(_Layer(), query, key)
    loss = g.loss(is_visual, subject, labels, bias)
    q, k = query[0, 4], key[0, 4 // 3]
    expected = []
    for t in (8, 9, 10):
        p = torch.softmax((q[t] @ k[: t + 1].t()) * 0.25 + bias[: t + 1], -1)
        expected.append(-torch.log(p[[3, 4, 7]].sum()))
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    loss.backward()
    assert query.grad[0, 4].abs().sum() > 0 and query.grad[0, [0, 1, 2, 3, 5]].abs().sum() == 0
    with pytest.raises(RuntimeError, match="no attention captured"):
        g.loss(is_visual, subject, labels)  # each capture serves one loss
    g.capture(_Layer(), query, key)
    with pytest.raises(ValueError, match="6 visual tokens, 5 in the subject mask"):
        g.loss(is_visual, subject[:5], labels)
