"""Sparrow draft-attention kernels.

Public API (all share one signature, documented with shapes in
``kernels/text_window_attention_ref.py``)::

    fn(query, key_cache, value_cache, block_table, text_positions, text_start_loc,
       query_start_loc, query_text_idx, window_size, scale, out=None) -> out

* ``text_window_attention``        dispatcher (``backend="auto"|"triton"|"torch"``).
* ``text_window_attention_torch``  vectorised torch path (CPU fallback).
* ``text_window_attention_triton`` Triton kernel launcher (CUDA, or CPU under
  ``TRITON_INTERPRET=1``).
* ``text_window_attention_naive``  loop oracle for tests.
* ``full_attention_torch``         full-context baseline (every position 0..pos).

``TRITON_INTERPRET`` is read by ``@triton.jit`` when this package is first imported,
so set it before ``import sparrow_kernels`` to run the Triton kernel on CPU tensors. Without a
usable Triton install the torch backend still works.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .text_window_attention_ref import (
    default_scale,
    full_attention_torch,
    text_window_attention_naive,
    text_window_attention_torch,
)

__all__ = [
    "text_window_attention",
    "text_window_attention_torch",
    "text_window_attention_triton",
    "text_window_attention_naive",
    "full_attention_torch",
    "default_scale",
    "select_backend",
]

_BACKENDS = ("auto", "triton", "torch")


try:
    # Imported eagerly (not lazily) because a lazy `import .text_window_attention_triton`
    # would rebind this package's attribute of the same name to the submodule.
    from .text_window_attention_triton import text_window_attention_triton
except ImportError as _triton_import_error:  # e.g. a platform without a Triton wheel
    _TRITON_IMPORT_ERROR = _triton_import_error

    def text_window_attention_triton(*args, **kwargs) -> torch.Tensor:
        """Stand-in when Triton cannot be imported: the torch backend still works."""
        raise RuntimeError(f"Triton is unavailable ({_TRITON_IMPORT_ERROR}); use backend='torch'")


def select_backend(query: torch.Tensor, backend: str = "auto") -> str:
    """Resolve ``backend`` to ``"triton"`` or ``"torch"`` for this ``query``.

    ``"auto"`` picks Triton for CUDA tensors and torch otherwise. On CPU, ``auto``
    picks Triton only if ``SPARROW_FORCE_TRITON=1``: ``TRITON_INTERPRET=1`` alone does
    not switch it, because the interpreter is ~1000x slower and a test process that
    sets it for its kernel tests must not silently slow every other caller down.
    Explicit ``"triton"``/``"torch"`` are obeyed as given.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if query.is_cuda or os.environ.get("SPARROW_FORCE_TRITON", "0") == "1":
        return "triton"
    return "torch"


def text_window_attention(
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
    backend: str = "auto",
) -> torch.Tensor:
    """Text-window attention over a paged KV cache, dispatched to Triton or torch.

    query ``[Q, Hq, D]``; key/value_cache ``[num_blocks, block_size, Hkv, D]``;
    block_table ``[S, max_blocks_per_seq]`` int32; text_positions ``[T]`` (CSR values,
    sorted per sequence); text_start_loc/query_start_loc ``[S + 1]``; query_text_idx
    ``[Q]``; out optional ``[Q, Hq, D]``. Returns ``[Q, Hq, D]`` in the query's dtype
    (or ``out``). Query ``i`` of sequence ``s`` attends to that sequence's text
    indices ``max(0, i - window_size + 1) .. i``. See :func:`select_backend`.
    """
    args = (query, key_cache, value_cache, block_table, text_positions, text_start_loc,
            query_start_loc, query_text_idx, window_size, scale, out)
    if select_backend(query, backend) == "triton":
        return text_window_attention_triton(*args)
    return text_window_attention_torch(*args)
