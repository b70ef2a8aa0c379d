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


def _random_request(rng):
    n = int(rng.integers(4, 80))
    ranges, visual = [], np.zeros(n, bool)
    for _ in range(int(rng.integers(0, 3))):
        off = int(rng.integers(0, n))
        length = int(rng.integers(1, n - off + 1))
        ranges.append((off, length, None))
        visual[off:off + length] = True
    return RequestText.build(list(range(n)), ranges), visual


def test_draft_windows_are_the_last_w_text_tokens_of_each_query():
    """window.first_pass_windows / chain_windows (no vLLM): every query sees exactly the text
    positions of the W text indices ending at its own, the chain's own positions included."""
    from sparrow_vllm.serving.window import chain_windows, first_pass_windows

    rng = np.random.default_rng(1)
    for _ in range(200):
        reqs = [_random_request(rng) for _ in range(int(rng.integers(1, 4)))]
        W = int(rng.integers(1, 40))
        seq_len = [rt.prompt_len + int(rng.integers(0, 10)) for rt, _ in reqs]
        valid = np.array([int(rng.integers(1, n + 1)) for n in seq_len])
        starts = np.array([n - v for n, v in zip(seq_len, valid)])
        texts = [rt for rt, _ in reqs]
        fp = first_pass_windows(texts, starts, valid, W)
        for r, (rt, visual) in enumerate(reqs):
            all_text = [p for p in range(seq_len[r] + 10) if p >= rt.prompt_len or not visual[p]]
            mine = [p for p in range(starts[r], starts[r] + valid[r]) if p in all_text]
            if not mine:
                assert fp.positions[r] is None
                continue
            assert fp.positions[r].tolist() == mine
            for p, q in zip(mine, fp.query_idx[r]):
                t = all_text.index(p)
                want = all_text[max(0, t - W + 1):t + 1]
                assert fp.window[r][max(0, q - W + 1):q + 1].tolist() == want
        last_tidx = np.array([len([p for p in range(n) if p >= rt.prompt_len or not v[p]]) - 1
                              for (rt, v), n in zip(reqs, seq_len)])
        last_pos = np.array(seq_len) - 1
        partial = rng.random(len(reqs)) < 0.2
        for s in range(1, 4):
            wins = chain_windows(texts, last_tidx, last_pos, s, partial, W)
            for r, (rt, v) in enumerate(reqs):
                if partial[r]:
                    assert wins[r].tolist() == [rt.positions_of(np.zeros(1, np.int64))[0]]
                    continue
                all_text = [p for p in range(seq_len[r]) if p >= rt.prompt_len or not v[p]]
                all_text += [last_pos[r] + j for j in range(1, s + 1)]  # the chain's own drafts
                t = last_tidx[r] + s
                assert wins[r].tolist() == all_text[max(0, t - W + 1):t + 1]
