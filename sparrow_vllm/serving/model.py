"""The Sparrow draft inside vLLM: vLLM's EAGLE-3 Llama draft with text-window attention.

Weights, fusion of the anchor-layer states (``fc``), the decoder layer and the reduced
vocabulary are exactly vLLM 0.32's ``Eagle3LlamaForCausalLM`` (so its loader, d2t map and
embedding sharing are reused). Only attention differs (VATA): queries attend over the last
``window_size`` *text* positions of their request, read from the draft's paged KV through
``sparrow_kernels.text_window_attention``; visual positions are never part of the draft sequence.
RoPE positions are text indices, given by :class:`sparrow_vllm.serving.proposer.SparrowProposer`.
"""

from __future__ import annotations

import torch
from torch import nn

from sparrow_kernels import text_window_attention
from sparrow_vllm.serving import window
from sparrow_vllm.serving.vllm_compat import DRAFT_ATTENTION_OP

# vLLM 0.32: vllm.model_executor.models.llama_eagle3.Eagle3LlamaForCausalLM (the proposer
# asserts the draft is an instance of it, llm_base_proposer.py propose()).
from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM


def split_kv_cache(kv_cache: torch.Tensor, num_kv_heads: int, head_size: int):
    """Views ``(key_cache, value_cache)``, each ``[num_blocks, block_size, kv_heads, head]``.

    Only the draft reads and writes its own cache region, so any fixed interpretation of
    the allocation vLLM made for this layer works; we recognise the two shapes vLLM 0.32
    allocates: ``[num_blocks, kv_heads, block_size, 2*head]`` (CPU, LBHNC) and
    ``[2, num_blocks, block_size, kv_heads, head]`` (FlashAttention-style).
    """
    if kv_cache.dim() == 4 and kv_cache.shape[1] == num_kv_heads and kv_cache.shape[3] == 2 * head_size:
        k = kv_cache[..., :head_size].transpose(1, 2)
        v = kv_cache[..., head_size:].transpose(1, 2)
        return k, v
    if kv_cache.dim() == 5 and kv_cache.shape[0] == 2 and kv_cache.shape[3] == num_kv_heads:
        return kv_cache[0], kv_cache[1]
    if kv_cache.dim() == 5 and kv_cache.shape[1] == 2 and kv_cache.shape[3] == num_kv_heads:
        return kv_cache[:, 0], kv_cache[:, 1]
    raise RuntimeError(
        f"sparrow-vllm: unexpected draft KV cache shape {tuple(kv_cache.shape)} "
        f"(kv_heads={num_kv_heads}, head_size={head_size}); this vLLM build is not supported."
    )


@torch.library.custom_op(DRAFT_ATTENTION_OP, mutates_args=())
def text_window_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             layer_name: str, scale: float) -> torch.Tensor:
    """VATA for one draft layer, opaque to torch.compile: writes ``key``/``value``
    ``[n, Hkv, D]`` into the layer's paged KV at the context's slots, then attends each query
    ``[n, Hq, D]`` over its window of text positions; returns ``[n, Hq, D]``.

    Why an op: vLLM compiles the draft's ``LlamaModel`` (``@support_torch_compile``), traced
    once with guards dropped (on CPU ``DYNAMO_TRACE_ONCE``), first in the drafter's dummy run.
    Python that branches on the per-step :class:`~sparrow_vllm.serving.window.TextWindowContext`
    would be traced once and baked in; inside an op it runs every step, as vLLM's own
    attention (``vllm::unified_attention_with_output``) reads its forward context. On GPU the
    op is one of the compilation's splitting ops (``vllm_compat`` 8), so piecewise CUDA graphs
    run it eagerly between graph pieces, never captured with one step's metadata.
    """
    from vllm.forward_context import get_forward_context

    ctx = window.current()
    if ctx is None:
        # vLLM's dummy/profile runs: no cache, no requests. Attend to self only.
        return value.repeat_interleave(query.shape[1] // value.shape[1], dim=1).to(query.dtype)
    attn = get_forward_context().no_compile_layers[layer_name]
    key_cache, value_cache = split_kv_cache(attn.kv_cache, attn.num_kv_heads, attn.head_size)
    block_size = key_cache.shape[1]
    slots = ctx.slot_mapping.long()
    valid = slots >= 0
    blk, off = slots[valid] // block_size, slots[valid] % block_size
    key_cache[blk, off] = key[valid].to(key_cache.dtype)
    value_cache[blk, off] = value[valid].to(value_cache.dtype)
    return text_window_attention(
        query, key_cache, value_cache, ctx.block_table, ctx.text_positions,
        ctx.text_start_loc, ctx.query_start_loc, ctx.query_text_idx, ctx.window_size, scale,
    )


@text_window_attention_op.register_fake
def _(query, key, value, layer_name, scale):
    return torch.empty_like(query)


class TextWindowAttention(nn.Module):
    """Replaces ``LlamaAttention.forward`` of a draft layer (same weights, same RoPE)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        b = self.base
        qkv, _ = b.qkv_proj(hidden_states)
        q, k, v = qkv.split([b.q_size, b.kv_size, b.kv_size], dim=-1)
        q, k = b.rotary_emb(positions, q, k)
        n = q.shape[0]
        out = text_window_attention_op(
            q.view(n, b.num_heads, b.head_dim), k.view(n, b.num_kv_heads, b.head_dim),
            v.view(n, b.num_kv_heads, b.head_dim), b.attn.layer_name, b.scaling)
        output, _ = b.o_proj(out.reshape(n, b.num_heads * b.head_dim))
        return output


class Eagle3SparrowForCausalLM(Eagle3LlamaForCausalLM):
    """Registered with vLLM's ModelRegistry by :func:`sparrow_vllm.register`.

    The name starts with ``Eagle3`` so vLLM's EAGLE config handling keeps it.
    """

    def __init__(self, *, vllm_config, prefix: str = ""):
        if vllm_config.use_v2_model_runner:
            raise RuntimeError(
                "sparrow-vllm: the Sparrow draft needs vLLM's V1 model runner "
                "(VLLM_USE_V2_MODEL_RUNNER=0); Model Runner V2 would not feed it text positions.")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        for layer in self.model.layers:
            layer.self_attn.forward = TextWindowAttention(layer.self_attn).forward
