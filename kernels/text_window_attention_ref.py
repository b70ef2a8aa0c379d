"""Torch implementations of Sparrow's text-window draft attention.

The Sparrow draft model never attends to visual tokens: each query attends only to
the ``W`` most recent *text* tokens of its own sequence (itself included). The draft
KV cache is vLLM-style paged and is written only at text positions; the slots of
visual positions are never written and hold garbage, so an implementation must
never read them (not even to multiply them by a zero probability, since
``0 * NaN = NaN``).

Every function in this module (and the Triton launcher in
``text_window_attention_triton.py``) shares one signature::

    fn(query, key_cache, value_cache, block_table, text_positions, text_start_loc,
       query_start_loc, query_text_idx, window_size, scale, out=None) -> out

Shapes (``Q`` = number of queries in the batch, ragged across sequences;
``S`` = number of sequences; ``T`` = total number of text tokens in the batch):

* ``query``           ``[Q, Hq, D]`` fp32/fp16/bf16.
* ``key_cache``       ``[num_blocks, block_size, Hkv, D]``; ``Hq % Hkv == 0`` (GQA:
  query head ``h`` reads kv head ``h // (Hq // Hkv)``). Any strides.
* ``value_cache``     ``[num_blocks, block_size, Hkv, D]``.
* ``block_table``     ``[S, max_blocks_per_seq]`` int32: physical block of each
  logical block. The K/V of the token at sequence position ``pos`` lives at
  ``key_cache[block_table[s, pos // block_size], pos % block_size]``.
* ``text_positions``  ``[T]`` int32/int64, CSR values: the sequence positions of
  each sequence's text tokens, sorted ascending.
* ``text_start_loc``  ``[S + 1]`` CSR offsets: the text tokens of sequence ``s``
  are ``text_positions[text_start_loc[s]:text_start_loc[s + 1]]``.
* ``query_start_loc`` ``[S + 1]``: the queries of sequence ``s`` are
  ``query[query_start_loc[s]:query_start_loc[s + 1]]``.
* ``query_text_idx``  ``[Q]``: text index ``i`` (within its sequence) of each
  query. It attends to text indices ``max(0, i - W + 1) .. i`` (causal inside the
  window) and requires ``i < number of text tokens of that sequence`` (the query's
  own K/V is already written).
* ``window_size``     ``W >= 1``.
* ``scale``           softmax scale (usually ``D ** -0.5``).
* ``out``             optional ``[Q, Hq, D]`` output buffer; otherwise a new tensor
  of the query's dtype is returned.

Accumulation is in fp32; the output is rounded once to the output dtype.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = [
    "text_window_attention_naive",
    "text_window_attention_torch",
    "full_attention_torch",
    "check_inputs",
    "query_seq_ids",
    "default_scale",
]


def check_inputs(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    text_positions: torch.Tensor,
    text_start_loc: torch.Tensor,
    query_start_loc: torch.Tensor,
    query_text_idx: torch.Tensor,
    window_size: int,
    out: Optional[torch.Tensor],
) -> None:
    """Shape/dtype checks shared by all implementations.

    Only metadata is inspected (no device synchronisation), so this is cheap enough
    to run on every call. Value preconditions (sorted positions, query text index in
    range) are the caller's responsibility; the naive oracle asserts them.
    """
    if query.dim() != 3:
        raise ValueError(f"query must be [num_queries, num_q_heads, head_dim], got {tuple(query.shape)}")
    if key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise ValueError(
            "key_cache/value_cache must both be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got {tuple(key_cache.shape)} and {tuple(value_cache.shape)}"
        )
    nq, hq, d = query.shape
    _, _, hkv, dk = key_cache.shape
    if dk != d:
        raise ValueError(f"head_dim mismatch: query {d}, cache {dk}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"num_q_heads ({hq}) must be a multiple of num_kv_heads ({hkv})")
    if block_table.dim() != 2:
        raise ValueError(f"block_table must be [num_seqs, max_blocks_per_seq], got {tuple(block_table.shape)}")
    num_seqs = block_table.shape[0]
    if text_start_loc.shape != (num_seqs + 1,) or query_start_loc.shape != (num_seqs + 1,):
        raise ValueError(
            f"text_start_loc {tuple(text_start_loc.shape)} and query_start_loc "
            f"{tuple(query_start_loc.shape)} must both be [num_seqs + 1] = [{num_seqs + 1}]"
        )
    if text_positions.dim() != 1:
        raise ValueError("text_positions must be 1-D (CSR values)")
    if query_text_idx.shape != (nq,):
        raise ValueError(f"query_text_idx must be [num_queries] = [{nq}], got {tuple(query_text_idx.shape)}")
    if int(window_size) < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    if out is not None and out.shape != query.shape:
        raise ValueError(f"out must have the query's shape {tuple(query.shape)}, got {tuple(out.shape)}")


def query_seq_ids(query_start_loc: torch.Tensor, num_queries: int) -> torch.Tensor:
    """``[Q]`` int64 sequence index of each query, from the ``[S + 1]`` CSR offsets.

    ``searchsorted`` (not ``repeat_interleave``) because it needs no host sync and
    so stays usable under CUDA graphs.
    """
    q = torch.arange(num_queries, device=query_start_loc.device, dtype=query_start_loc.dtype)
    return torch.searchsorted(query_start_loc[1:].contiguous(), q, right=True)


def _new_out(query: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.empty_like(query) if out is None else out


# --------------------------------------------------------------------------------------
# Oracle: plain loops, obviously correct, slow.
# --------------------------------------------------------------------------------------
def text_window_attention_naive(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    text_positions: torch.Tensor,
    text_start_loc: torch.Tensor,
    query_start_loc: torch.Tensor,
    query_text_idx: torch.Tensor,
    window_size: int,
    scale: float,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Loop-per-(query, head) reference used as the test oracle. Same contract/shapes
    as the module docstring. Reads exactly the slots of the window's text tokens."""
    check_inputs(query, key_cache, value_cache, block_table, text_positions, text_start_loc,
                 query_start_loc, query_text_idx, window_size, out)
    out = _new_out(query, out)
    nq, hq, d = query.shape
    block_size, hkv = key_cache.shape[1], key_cache.shape[2]
    group = hq // hkv
    qsl = query_start_loc.tolist()
    tsl = text_start_loc.tolist()
    tpos = text_positions.tolist()
    qtidx = query_text_idx.tolist()
    bt = block_table.tolist()
    for s in range(block_table.shape[0]):
        seq_text = tpos[tsl[s]:tsl[s + 1]]
        assert all(a < b for a, b in zip(seq_text, seq_text[1:])), "text positions must be sorted"
        for q in range(qsl[s], qsl[s + 1]):
            i = qtidx[q]
            assert 0 <= i < len(seq_text), f"query {q}: text index {i} not in [0, {len(seq_text)})"
            window = seq_text[max(0, i - window_size + 1): i + 1]
            keys = []
            values = []
            for pos in window:
                block = bt[s][pos // block_size]
                keys.append(key_cache[block, pos % block_size].float())      # [Hkv, D]
                values.append(value_cache[block, pos % block_size].float())  # [Hkv, D]
            k = torch.stack(keys)    # [n, Hkv, D]
            v = torch.stack(values)  # [n, Hkv, D]
            for h in range(hq):
                kvh = h // group
                scores = (k[:, kvh] @ query[q, h].float()) * scale  # [n]
                probs = torch.softmax(scores, dim=0)
                out[q, h] = (probs @ v[:, kvh]).to(out.dtype)
    return out


# --------------------------------------------------------------------------------------
# Vectorised torch path (the CPU fallback).
# --------------------------------------------------------------------------------------
def text_window_attention_torch(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    text_positions: torch.Tensor,
    text_start_loc: torch.Tensor,
    query_start_loc: torch.Tensor,
    query_text_idx: torch.Tensor,
    window_size: int,
    scale: float,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Vectorised gather + softmax over a ``[Q, W]`` window. Same contract/shapes as the
    module docstring.

    Cost is O(Q * W * Hkv * D) regardless of how many visual tokens the sequences
    hold: only the window's text slots are gathered.
    """
    check_inputs(query, key_cache, value_cache, block_table, text_positions, text_start_loc,
                 query_start_loc, query_text_idx, window_size, out)
    out = _new_out(query, out)
    nq, hq, d = query.shape
    if nq == 0:
        return out
    block_size, hkv = key_cache.shape[1], key_cache.shape[2]
    group = hq // hkv
    dev = query.device
    qtidx = query_text_idx.to(dev, torch.long)
    # No window can be longer than the longest text prefix in the batch; clipping W
    # keeps a huge window_size ("attend to all text") from allocating [Q, W] gathers.
    w = min(int(window_size), int(qtidx.max()) + 1)

    seq = query_seq_ids(query_start_loc.to(dev), nq)                    # [Q]
    j = qtidx[:, None] + torch.arange(1 - w, 1, device=dev)             # [Q, w] text idx, ascending
    valid = j >= 0                                                      # [Q, w]
    # Where some j < 0 the window starts at text index 0, so clamping to 0 yields a
    # slot that is inside the window: no slot outside the window (or visual) is read.
    j = j.clamp_min(0)
    tsl = text_start_loc.to(dev, torch.long)
    pos = text_positions.to(dev, torch.long)[tsl[seq][:, None] + j]     # [Q, w] seq positions
    phys = block_table.to(dev)[seq[:, None], pos // block_size].long()  # [Q, w]
    off = pos % block_size
    # Advanced indexing on (block, offset) gathers only the needed rows; it never
    # materialises the whole (possibly strided) cache.
    k = key_cache[phys, off].float()                                    # [Q, w, Hkv, D]
    v = value_cache[phys, off].float()                                  # [Q, w, Hkv, D]

    qf = query.float().view(nq, hkv, group, d)                          # [Q, Hkv, G, D]
    scores = torch.einsum("qhgd,qwhd->qhgw", qf, k) * scale             # [Q, Hkv, G, w]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = torch.einsum("qhgw,qwhd->qhgd", probs, v)                       # [Q, Hkv, G, D]
    out.copy_(o.reshape(nq, hq, d))
    return out


# --------------------------------------------------------------------------------------
# Full-context baseline (what an EAGLE-style draft does): attends to every position.
# --------------------------------------------------------------------------------------
def full_attention_torch(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    text_positions: torch.Tensor,
    text_start_loc: torch.Tensor,
    query_start_loc: torch.Tensor,
    query_text_idx: torch.Tensor,
    window_size: int,
    scale: float,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Causal attention over *every* sequence position ``0 .. pos`` of each query,
    visual tokens included, where ``pos = text_positions[text_start_loc[s] + i]``.

    Same signature/shapes as the module docstring so it can be swapped in;
    ``window_size`` is accepted and ignored. Unlike the text-window functions this
    requires *every* slot up to the query position to be written (as a full-context
    draft's cache would be). One pass per sequence: the gathered K/V of the longest
    query's prefix, ``[L, Hkv, D]``, is shared by that sequence's queries.
    """
    check_inputs(query, key_cache, value_cache, block_table, text_positions, text_start_loc,
                 query_start_loc, query_text_idx, max(int(window_size), 1), out)
    out = _new_out(query, out)
    nq, hq, d = query.shape
    if nq == 0:
        return out
    block_size, hkv = key_cache.shape[1], key_cache.shape[2]
    group = hq // hkv
    dev = query.device
    qsl = query_start_loc.tolist()
    tsl = text_start_loc.to(dev, torch.long)
    tpos = text_positions.to(dev, torch.long)
    qtidx = query_text_idx.to(dev, torch.long)
    for s in range(block_table.shape[0]):
        q0, q1 = qsl[s], qsl[s + 1]
        if q1 == q0:
            continue
        qpos = tpos[tsl[s] + qtidx[q0:q1]]                                # [n] positions of queries
        length = int(qpos.max()) + 1
        kpos = torch.arange(length, device=dev)                          # [L]
        phys = block_table[s].to(dev)[kpos // block_size].long()
        k = key_cache[phys, kpos % block_size].float()                   # [L, Hkv, D]
        v = value_cache[phys, kpos % block_size].float()                 # [L, Hkv, D]
        qf = query[q0:q1].float().view(q1 - q0, hkv, group, d)           # [n, Hkv, G, D]
        scores = torch.einsum("qhgd,lhd->qhgl", qf, k) * scale           # [n, Hkv, G, L]
        causal = kpos[None, :] <= qpos[:, None]                          # [n, L]
        scores = scores.masked_fill(~causal[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        o = torch.einsum("qhgl,lhd->qhgd", probs, v)
        out[q0:q1] = o.reshape(q1 - q0, hq, d).to(out.dtype)
    return out


def default_scale(head_dim: int) -> float:
    """The usual ``1 / sqrt(head_dim)`` softmax scale."""
    return 1.0 / math.sqrt(head_dim)
