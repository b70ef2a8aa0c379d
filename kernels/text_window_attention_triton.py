"""Triton kernel for Sparrow's text-window draft attention over a paged KV cache.

Same contract and shapes as ``text_window_attention_ref`` (see its module docstring):
each query attends to the ``W`` most recent text tokens of its sequence, whose K/V
slots are found through ``text_positions`` and the block table. Visual slots are
never written, so the kernel never loads them: every K/V load is masked to the
window's text tokens.

Layout: one program per ``(query, kv_head)``. The ``G = Hq // Hkv`` query heads that
share that kv head form the M dimension of ``tl.dot`` (padded to >= 16, the minimum
``tl.dot`` shape on a GPU), so each K/V row is loaded once per GQA group. The program
walks its window in ``BLOCK_N`` chunks with an online (flash-style) softmax in fp32.
The window is at most a few hundred tokens, so there is no split-K.

Portability notes (triton 3.7):
* Every load is converted with ``.to(tl.float32)`` right after ``tl.load``: the
  interpreter (``TRITON_INTERPRET=1``) returns bf16 as raw uint16 bits otherwise.
  fp16/bf16 values are exact in tf32, so the q.k product loses nothing on a GPU.
* ``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, i.e. when this module is
  first imported (``import sparrow_kernels`` imports it): set it before that.
* No ``@triton.autotune``: more than one config fails in the interpreter, and the
  decode shapes are fixed enough that a heuristic block choice is fine.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .text_window_attention_ref import check_inputs, query_seq_ids

__all__ = ["text_window_attention_triton", "triton_interpreter_enabled"]

_LOG2E = 1.4426950408889634


@triton.jit
def _text_window_attn_kernel(
    Q, K, V, O,                      # [Q, Hq, D], [NB, BS, Hkv, D] x2, [Q, Hq, D]
    BlockTable,                      # [S, max_blocks] int32
    TextPos,                         # [T] CSR values (contiguous)
    TextStart,                       # [S + 1] CSR offsets (contiguous)
    QuerySeq,                        # [Q] sequence of each query (contiguous)
    QueryTextIdx,                    # [Q] text index of each query (contiguous)
    scale_log2,                      # softmax scale * log2(e): exp2 is the cheap exponential
    window_size,
    block_size,
    head_dim,
    stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    stride_on, stride_oh, stride_od,
    stride_bts, stride_btb,
    GROUP: tl.constexpr,             # query heads per kv head
    BLOCK_M: tl.constexpr,           # GROUP padded to a power of two >= 16
    BLOCK_N: tl.constexpr,           # window chunk (keys per iteration), >= 16
    BLOCK_D: tl.constexpr,           # head_dim padded to a power of two >= 16
    DOT_PRECISION: tl.constexpr,     # "ieee" for fp32 inputs, "tf32" otherwise
):
    qi = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)

    seq = tl.load(QuerySeq + qi).to(tl.int64)
    i = tl.load(QueryTextIdx + qi).to(tl.int64)          # query's text index in its seq
    t_start = tl.load(TextStart + seq).to(tl.int64)
    lo = tl.maximum(i - window_size + 1, 0)              # first text index of the window

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < GROUP
    d_mask = offs_d < head_dim

    heads = kvh * GROUP + offs_m
    q_ptrs = Q + qi * stride_qn + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd
    # Padded rows/cols load 0: they add 0 to the dots and are never stored.
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    bt_row = BlockTable + seq * stride_bts
    k_head = K + kvh * stride_kh
    v_head = V + kvh * stride_vh
    for start in range(lo, i + 1, BLOCK_N):
        j = start + offs_n                               # text indices of this chunk
        n_mask = j <= i                                  # causal end of the window
        # Masked loads everywhere below: a text index past the query (possibly past
        # the sequence's text), its block-table entry and its K/V slot are never read.
        pos = tl.load(TextPos + t_start + j, mask=n_mask, other=0).to(tl.int64)
        phys = tl.load(bt_row + (pos // block_size) * stride_btb, mask=n_mask, other=0).to(tl.int64)
        off = pos % block_size
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(
            k_head + phys[:, None] * stride_kb + off[:, None] * stride_kt + offs_d[None, :] * stride_kd,
            mask=kv_mask, other=0.0,
        ).to(tl.float32)                                 # [BLOCK_N, BLOCK_D]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        # Each chunk holds at least its first key (start <= i), so m_new is finite and
        # the first iteration's alpha = exp2(-inf) = 0 wipes the empty accumulator.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_head + phys[:, None] * stride_vb + off[:, None] * stride_vt + offs_d[None, :] * stride_vd,
            mask=kv_mask, other=0.0,
        ).to(tl.float32)                                 # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = O + qi * stride_on + heads[:, None] * stride_oh + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def triton_interpreter_enabled() -> bool:
    """True if the kernel above was built by the Triton interpreter (CPU tensors OK)."""
    return type(_text_window_attn_kernel).__name__ == "InterpretedFunction"


def _next_pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def text_window_attention_triton(
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
    """Launch the Triton kernel. Same signature/shapes as
    ``text_window_attention_ref.text_window_attention_torch``:

    query ``[Q, Hq, D]``, key/value_cache ``[num_blocks, block_size, Hkv, D]`` (any
    strides), block_table ``[S, max_blocks]`` int32, text_positions ``[T]``,
    text_start_loc/query_start_loc ``[S + 1]``, query_text_idx ``[Q]``, out
    ``[Q, Hq, D]`` (optional). Needs CUDA tensors, or ``TRITON_INTERPRET=1`` set
    before this module was imported (then CPU tensors work, slowly).
    """
    check_inputs(query, key_cache, value_cache, block_table, text_positions, text_start_loc,
                 query_start_loc, query_text_idx, window_size, out)
    if not query.is_cuda and not triton_interpreter_enabled():
        raise RuntimeError(
            "text_window_attention_triton needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "sparrow_kernels.text_window_attention_triton is first imported; use the torch backend on CPU."
        )
    if out is None:
        out = torch.empty_like(query)
    nq, hq, d = query.shape
    if nq == 0:
        return out
    hkv = key_cache.shape[2]
    group = hq // hkv

    # The kernel indexes these 1-D metadata tensors with unit stride; they are tiny.
    text_positions = text_positions.contiguous()
    text_start_loc = text_start_loc.contiguous()
    query_text_idx = query_text_idx.contiguous()
    query_seq = query_seq_ids(query_start_loc, nq).contiguous()

    block_m = max(16, _next_pow2(group))
    block_d = max(16, _next_pow2(d))
    # One chunk covers small windows; cap it so the [BLOCK_N, BLOCK_D] K/V tiles stay
    # in registers for head_dim 256.
    block_n = max(16, min(_next_pow2(window_size), 64 if block_d <= 128 else 32))
    dot_precision = "ieee" if query.dtype == torch.float32 else "tf32"

    grid = (nq, hkv)
    _text_window_attn_kernel[grid](
        query, key_cache, value_cache, out,
        block_table, text_positions, text_start_loc, query_seq, query_text_idx,
        float(scale) * _LOG2E,
        int(window_size),
        key_cache.shape[1],
        d,
        query.stride(0), query.stride(1), query.stride(2),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), key_cache.stride(3),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2), value_cache.stride(3),
        out.stride(0), out.stride(1), out.stride(2),
        block_table.stride(0), block_table.stride(1),
        GROUP=group,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        DOT_PRECISION=dot_precision,
        num_warps=4 if block_d <= 128 else 8,
    )
    return out
