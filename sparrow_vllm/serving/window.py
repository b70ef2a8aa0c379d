"""Per-forward inputs of the draft's text-window attention (VATA).

The proposer sets one :class:`TextWindowContext` around each draft forward; the draft's
attention layers read it. Same idea as nano-vllm's attention context: the metadata lives
in one small object instead of being threaded through every call. Tensors are on the
draft's device; shapes as in ``sparrow_kernels.text_window_attention``.

Which positions each draft query attends to is decided by two pure functions (numpy, no
vLLM): :func:`first_pass_windows` for the pass over the tokens the target just verified and
:func:`chain_windows` for chain step ``s`` of the k-token draft.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TextWindowContext:
    slot_mapping: torch.Tensor  # [num_tokens] KV slot of each draft token (its target position's slot)
    block_table: torch.Tensor  # [num_seqs, max_blocks]
    text_positions: torch.Tensor  # [total_text] CSR: sequence positions of the window's text tokens
    text_start_loc: torch.Tensor  # [num_seqs + 1]
    query_start_loc: torch.Tensor  # [num_seqs + 1]
    query_text_idx: torch.Tensor  # [num_tokens] index into the seq's text_positions
    window_size: int


_current: TextWindowContext | None = None


def current() -> TextWindowContext | None:
    return _current


@contextlib.contextmanager
def text_window_context(ctx: TextWindowContext | None):
    global _current
    prev, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = prev


@dataclass
class FirstPass:
    """Per request (``None`` where it verified no text token this step): the text positions it
    verified (``positions``), their text indices (``text_index``), the sequence positions of
    its window (``window``: the last ``W`` text tokens up to the last query) and each query's
    index into that window (``query_idx``)."""

    positions: list
    text_index: list
    window: list
    query_idx: list


def first_pass_windows(req_texts, starts: np.ndarray, valid: np.ndarray, window_size: int) -> FirstPass:
    """Request ``r`` verified ``valid[r]`` tokens from position ``starts[r]``; its queries are
    the text ones among them, each attending to the text tokens of the ``window_size`` text
    indices ending at its own (the kernel masks each query to its own window inside the
    request's span)."""
    out = FirstPass([], [], [], [])
    for r, rt in enumerate(req_texts):
        pos = starts[r] + np.arange(valid[r], dtype=np.int64)
        tpos = pos[rt.is_text(pos)]
        if not len(tpos):
            for x in (out.positions, out.text_index, out.window, out.query_idx):
                x.append(None)
            continue
        tidx = rt.text_index(tpos)
        base = max(0, int(tidx[0]) - window_size + 1)
        out.positions.append(tpos)
        out.text_index.append(tidx)
        out.window.append(rt.positions_of(np.arange(base, int(tidx[-1]) + 1, dtype=np.int64)))
        out.query_idx.append(tidx - base)
    return out


def chain_windows(req_texts, last_tidx: np.ndarray, last_pos: np.ndarray, s: int, partial: np.ndarray,
                  window_size: int) -> list[np.ndarray]:
    """Chain step ``s`` (1..k-1): request ``r``'s query sits at text index ``last_tidx[r] + s``
    (position ``last_pos[r] + s``); its window holds the known text positions of the last
    ``window_size`` text indices, then the chain's own earlier positions. A ``partial``
    request (mid-prefill: vLLM discards its drafts) attends to its first text token only."""
    out = []
    for r, rt in enumerate(req_texts):
        if partial[r]:
            out.append(rt.positions_of(np.zeros(1, dtype=np.int64)))
            continue
        lt = int(last_tidx[r])
        q = lt + s
        base = max(0, q - window_size + 1)
        known = rt.positions_of(np.arange(base, lt + 1, dtype=np.int64))
        chain = last_pos[r] + np.arange(max(base, lt + 1), q + 1, dtype=np.int64) - lt
        out.append(np.concatenate([known, chain]))
    return out
