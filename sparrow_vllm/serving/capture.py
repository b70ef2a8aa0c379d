"""Training data from the serving engine itself: ``SPARROW_CAPTURE=DIR``.

With the variable set, a Sparrow engine's proposer writes, at every ``propose()`` call, the
target's anchor-layer states of the tokens the target just verified (prompt chunks and
accepted outputs alike), one file per call. :func:`assemble` turns a request's rows back into
one ``sparrow data`` sample (``draft/data.py`` layout): the very prompt tokens, frames and
states ``vllm serve`` computes, so a draft trains on what it will see when served. The draft
that runs meanwhile does not matter (verification is lossless); prefix caching must be off, so
that every prompt token's states are computed and pass through ``propose()``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

ENV = "SPARROW_CAPTURE"


class StateCapture:
    def __init__(self, out_dir, num_anchors: int):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.num_anchors = num_anchors
        self.calls = 0

    @classmethod
    def from_env(cls, num_anchors: int) -> "StateCapture | None":
        d = os.environ.get(ENV)
        return cls(d, num_anchors) if d else None

    def record(self, req_ids: list[str], starts: np.ndarray, valid: np.ndarray, qsl: np.ndarray,
               tokens: np.ndarray, t_pos: np.ndarray, hidden: torch.Tensor, is_text: list[np.ndarray]) -> None:
        """One call's verified tokens: request ``r`` has ``valid[r]`` of them from position
        ``starts[r]``, at rows ``qsl[r]..`` of ``tokens`` / ``t_pos`` / ``hidden`` (``[n, A*H]``);
        ``is_text[r]``: which of them are text."""
        from safetensors.torch import save_file

        rows = np.concatenate([qsl[r] + np.arange(v) for r, v in enumerate(valid)]).astype(np.int64)
        if not len(rows):
            return
        req = np.concatenate([np.full(v, r) for r, v in enumerate(valid)])
        pos = np.concatenate([starts[r] + np.arange(v) for r, v in enumerate(valid)])
        h = hidden[torch.from_numpy(rows).to(hidden.device)].to(torch.float16).cpu()
        tensors = {"req": torch.from_numpy(req.astype(np.int32)), "pos": torch.from_numpy(pos.astype(np.int64)),
                   "token": torch.from_numpy(tokens[rows].astype(np.int64)),
                   "t_pos": torch.from_numpy(t_pos[rows].astype(np.int64)),
                   "is_text": torch.from_numpy(np.concatenate(is_text).astype(np.bool_)),
                   "hidden": h.reshape(len(rows), self.num_anchors, -1).contiguous()}
        name = f"call-{os.getpid()}-{self.calls:07d}.safetensors"
        self.calls += 1
        tmp = self.dir / (name + ".tmp")
        save_file(tensors, str(tmp), metadata={"req_ids": json.dumps(list(req_ids))})
        os.replace(tmp, self.dir / name)


def read_capture(capture_dir) -> dict[str, dict[int, tuple]]:
    """``{engine request id: {position: (token, t_pos, is_text, hidden [A, H])}}``; a position
    seen twice (a preempted request recomputed) keeps its last record."""
    from safetensors import safe_open

    out: dict[str, dict[int, tuple]] = {}
    for f in sorted(Path(capture_dir).glob("call-*.safetensors"), key=lambda p: (p.name.split("-")[1], p.name)):
        with safe_open(str(f), "pt") as s:
            ids = json.loads(s.metadata()["req_ids"])
            t = {k: s.get_tensor(k) for k in s.keys()}
        for i in range(len(t["pos"])):
            out.setdefault(ids[int(t["req"][i])], {})[int(t["pos"][i])] = (
                int(t["token"][i]), int(t["t_pos"][i]), bool(t["is_text"][i]), t["hidden"][i])
    return out


def assemble(rows: dict[int, tuple], prompt_token_ids: list[int], output_token_ids: list[int],
             all_positions: bool) -> dict[str, torch.Tensor]:
    """One request's captured rows -> a ``sparrow data`` sample (text rows, or every row with
    ``all_positions``). Every position before the last output token must have been captured."""
    seq = list(prompt_token_ids) + list(output_token_ids)
    T, P = len(seq), len(prompt_token_ids)
    missing = [p for p in range(T - 1) if p not in rows]
    if missing:
        raise ValueError(f"{len(missing)} positions were not captured (first {missing[0]}): was prefix caching on?")
    if any(rows[p][0] != seq[p] for p in range(T - 1)):
        raise ValueError("captured tokens disagree with the request's tokens")
    a, h = rows[0][3].shape
    hidden = torch.stack([rows[p][3] for p in range(T - 1)] + [torch.zeros(a, h, dtype=torch.float16)])
    is_text = torch.tensor([rows[p][2] for p in range(T - 1)] + [True])
    t_pos = torch.tensor([rows[p][1] for p in range(T - 1)] + [rows[T - 2][1] + 1])
    greedy = torch.full((T,), -1, dtype=torch.long)
    greedy[P - 1:T - 1] = torch.tensor(seq[P:])
    text_index = torch.cumsum(is_text.long(), 0) - 1
    text_index[~is_text] = -1
    keep = torch.ones(T, dtype=torch.bool) if all_positions else is_text
    kept = keep.nonzero()[:, 0]
    return {"ids": torch.tensor(seq)[kept].int(), "greedy": greedy[kept].int(), "seq_pos": kept.int(),
            "text_index": text_index[kept].int(), "t_pos": t_pos[kept].int(), "hidden": hidden[kept].contiguous(),
            "response_start": torch.tensor([int((kept < P).sum())], dtype=torch.int32)}
