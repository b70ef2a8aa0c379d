import numpy as np

from sparrow_vllm.serving.text_positions import RequestText


def _brute(prompt_len, visual, pos):
    is_text = [p >= prompt_len or not visual[p] for p in range(pos + 1)]
    return is_text


def test_text_index_and_next_text_position_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 60))
        ranges = []
        visual = np.zeros(n, bool)
        for _ in range(int(rng.integers(0, 3))):
            off = int(rng.integers(0, n))
            length = int(rng.integers(1, n - off + 1))
            ranges.append((off, length, None))
            visual[off:off + length] = True
        rt = RequestText.build(list(range(n)), ranges)
        positions = np.arange(n + 8)
        is_text = np.array([p >= n or not visual[p] for p in positions])
        np.testing.assert_array_equal(rt.is_text(positions), is_text)
        tidx = np.cumsum(is_text) - is_text
        np.testing.assert_array_equal(rt.text_index(positions), tidx)
        text_pos = positions[is_text]
        np.testing.assert_array_equal(rt.positions_of(np.arange(len(text_pos))), text_pos)
        for p in positions:
            nxt = next(q for q in range(p + 1, n + 20) if q >= n or not visual[q])
            assert rt.next_text_position(np.array([p]))[0] == nxt


def test_is_embed_mask_limits_visual_positions():
    rt = RequestText.build(list(range(10)), [(2, 5, np.array([False, True, True, True, False]))])
    np.testing.assert_array_equal(rt.is_text(np.arange(10)),
                                  [True, True, True, False, False, False, True, True, True, True])
