"""Per-forward inputs of the draft's text-window attention (VATA).

The proposer sets one :class:`TextWindowContext` around each draft forward; the draft's
attention layers read it. Same idea as nano-vllm's attention context: the metadata lives
in one small object instead of being threaded through every call. Tensors are on the
draft's device; shapes as in ``sparrow_kernels.text_window_attention``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
