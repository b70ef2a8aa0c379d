"""The long-video simulation the target's vision tower trains with (target/train_vision.py):
a ``log m`` logit bias on visual keys must be attention over ``m`` copies of each of them."""

import math
import random
from types import SimpleNamespace

import pytest
import torch

from sparrow_vllm.target.train_vision import long_video_attention, simulated_repeats


@pytest.mark.parametrize("m", [1, 3, 7])
def test_visual_key_bias_equals_attention_over_repeated_visual_tokens(m):
    torch.manual_seed(m)
    heads, t, d = 3, 11, 8
    q, k, v = (torch.randn(1, heads, t, d) for _ in range(3))
    visual = torch.zeros(t, dtype=torch.bool)
    visual[2:8] = True  # a video block between text tokens
    module = SimpleNamespace(is_causal=True)

    got, _ = long_video_attention(module, q, k, v, None, visual_key_bias=visual.float() * math.log(m))

    # Reference: every visual key/value really repeated m times; query i sees copies of keys <= i.
    src = torch.tensor([j for j in range(t) for _ in range(m if visual[j] else 1)])
    allowed = src[None, :] <= torch.arange(t)[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, src], v[:, :, src], attn_mask=allowed)
    torch.testing.assert_close(got, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)
    if m > 1:  # and the bias does change the result (text queries after the video)
        plain, _ = long_video_attention(module, q, k, v, None, visual_key_bias=torch.zeros(t))
        assert not torch.allclose(got[:, 8:], plain[:, 8:], atol=1e-4)


def test_simulated_repeats_stay_within_the_simulated_length():
    rng = random.Random(0)
    ms = [simulated_repeats(rng, 128, 32768) for _ in range(400)]
    assert all(1.0 <= m <= 256.0 for m in ms)
    assert 0.15 < sum(m == 1.0 for m in ms) / len(ms) < 0.35  # a quarter trains at real length
    assert max(ms) > 100  # and the rest reaches long videos
    assert simulated_repeats(rng, 40000, 32768) == 1.0  # already longer than simulated
