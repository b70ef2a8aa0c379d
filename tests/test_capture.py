"""serving/capture.py: a request's verified tokens, captured call by call inside the engine,
assemble into the ``sparrow data`` sample layout (pure torch; the engine path is in
tests/test_from_source.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparrow_vllm.serving.capture import StateCapture, assemble, read_capture


def test_calls_assemble_into_one_sample(tmp_path):
    A, H = 2, 4
    prompt = [5, 6, 7, 8, 9]  # position 2 is visual
    output = [10, 11, 12]
    seq = prompt + output
    states = torch.arange(len(seq) * A * H, dtype=torch.float32).reshape(len(seq), A * H)
    cap = StateCapture(tmp_path, A)
    # call 1: request "r-1a2b" prefills 0..2 beside another request; call 2: 3..4 (+ its first
    # output, rejected); call 3: 4 again after a preemption, then outputs 5..6 accepted.
    def call(ranges):
        ids = [rid for rid, _, _ in ranges]
        starts = np.array([a for _, a, _ in ranges])
        valid = np.array([b - a for _, a, b in ranges])
        qsl = np.concatenate([[0], np.cumsum(valid)])
        tokens = np.concatenate([np.array(seq)[a:b] if rid == "r-1a2b" else np.full(b - a, 99) for rid, a, b in ranges])
        rows = torch.cat([states[a:b] if rid == "r-1a2b" else torch.full((b - a, A * H), -1.0) for rid, a, b in ranges])
        t_pos = np.concatenate([np.arange(a, b) + 100 for _, a, b in ranges])
        is_text = [np.arange(a, b) != 2 for _, a, b in ranges]
        cap.record(ids, starts, valid, qsl, tokens, t_pos, rows, is_text)

    call([("other-0000", 0, 2), ("r-1a2b", 0, 3)])
    call([("r-1a2b", 3, 5)])
    call([("r-1a2b", 4, 7)])
    rows = read_capture(tmp_path)["r-1a2b"]
    assert sorted(rows) == list(range(7))
    s = assemble(rows, prompt, output, all_positions=False)
    assert s["seq_pos"].tolist() == [0, 1, 3, 4, 5, 6, 7]  # visual position 2 left out
    assert s["ids"].tolist() == [5, 6, 8, 9, 10, 11, 12]
    assert s["greedy"].tolist() == [-1, -1, -1, 10, 11, 12, -1]
    assert s["text_index"].tolist() == list(range(7)) and int(s["response_start"]) == 4
    assert torch.equal(s["hidden"][2].float().reshape(-1), states[3])  # float16 holds these exactly
    assert torch.equal(s["hidden"][-1], torch.zeros(A, H, dtype=torch.float16))  # the last token is never fed
    full = assemble(rows, prompt, output, all_positions=True)
    assert full["seq_pos"].tolist() == list(range(8)) and full["text_index"][2] == -1
    assert full["t_pos"].tolist()[:7] == [100, 101, 102, 103, 104, 105, 106]
    with pytest.raises(ValueError, match="not captured"):
        assemble({p: v for p, v in rows.items() if p != 1}, prompt, output, all_positions=False)
    with pytest.raises(ValueError, match="disagree"):
        assemble(rows, [5, 6, 7, 8, 0], output, all_positions=False)
