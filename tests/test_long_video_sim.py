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


def test_stretched_positions_place_visual_tokens_m_apart():
    from sparrow_vllm.target.train_vision import stretched_positions

    def stretch(pos, visual, m):
        return stretched_positions(torch.tensor([pos]), torch.tensor(visual, dtype=torch.bool), m)[0].tolist()

    # text, a 3-token video, text: visual token i at 2 + 4i, the text after it 3 * 3 further on
    assert stretch(range(7), [0, 0, 1, 1, 1, 0, 0], 4) == [0, 1, 2, 6, 10, 14, 15]
    # packed question blocks restart their positions after the video and move with it
    assert stretch([0, 1, 2, 3, 4, 5, 6, 5, 6], [0, 0, 1, 1, 1, 0, 0, 0, 0], 4) == [0, 1, 2, 6, 10, 14, 15, 14, 15]
    # two videos (a stream): each one's tokens count for the text after it
    assert stretch(range(6), [0, 1, 1, 0, 1, 0], 3) == [0, 1, 4, 7, 8, 11]
    assert stretch(range(7), [0, 0, 1, 1, 1, 0, 0], 1) == list(range(7))
    with pytest.raises(ValueError, match="1-D positions"):
        stretched_positions(torch.zeros(3, 1, 5, dtype=torch.long), torch.zeros(5, dtype=torch.bool), 2.0)


def test_a_llava_forward_reads_stretched_positions(tmp_path):
    """LLaVA-OV's forward takes the stretched (float) positions: the same logits at m = 1, other
    logits after the video and the same before it at m > 1; Qwen2.5-VL refuses the option."""
    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.train_vision import stretched_positions, train_vision
    from sparrow_vllm.world import make_sample

    adapter = get_family("llava-onevision")
    model, _tok, processor = adapter.build_model(None, seed=0)
    s = make_sample("train", 3, 16)
    inputs = adapter.hf_inputs(processor, s.frames(), s.question)
    is_visual = torch.isin(inputs["input_ids"][0], torch.tensor(adapter.visual_token_ids(model.config)))
    base = adapter.position_ids(model, inputs)
    with torch.no_grad():
        plain = model(**inputs).logits[0]
        same = model(**inputs, position_ids=stretched_positions(base, is_visual, 1.0)).logits[0]
        far = model(**inputs, position_ids=stretched_positions(base, is_visual, 64.0)).logits[0]
    first = int(is_visual.nonzero()[0])
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(far[:first + 1], plain[:first + 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(far[-1], plain[-1], atol=1e-3)
    with pytest.raises(ValueError, match="qwen2.5-vl.s video positions are compressed"):
        train_vision(tmp_path / "q", steps=1, simulate_tokens=32768, simulate_positions=True)
    with pytest.raises(ValueError, match="give simulate_tokens"):
        train_vision(tmp_path / "l", steps=1, family="llava-onevision", simulate_positions=True)
