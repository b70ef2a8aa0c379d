"""The Sparrow draft (and the EAGLE-3 baseline) in plain torch: all of the model's math.

Mirrors vLLM 0.32 ``Eagle3LlamaForCausalLM`` (``vllm/model_executor/models/llama_eagle3.py``)
so that a vLLM model class can load the same ``model.safetensors`` and compute the same
numbers. Per draft position::

    g        = fc(concat_l h_l)                       # only for target states (IVSB anchors)
    e        = input_layernorm(embed(token))          # embed = the target's, frozen
    residual = g ; x = hidden_norm(g)                 # norm_before_residual=False (vLLM default)
    a        = o_proj(attn(qkv_proj(concat[e, x]), RoPE(position)))
    residual = a + residual
    out_prenorm = mlp(post_attention_layernorm(residual)) + residual
    logits   = lm_head(norm(out_prenorm))             # over the draft vocab; d2t maps to target ids

Chain steps >= 2 feed ``out_prenorm`` of the previous step as ``g`` (no fc) and the drafted
token. Which keys a query may read is the only difference between the recipes (VATA):
``text_window`` reads the last W text indices (the sequence holds text positions only),
``full`` reads every earlier position, visual ones included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparrow_vllm.draft.config import SparrowDraftConfig

NO_WINDOW = 1 << 30


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style RoPE (vLLM ``get_rope`` default for Llama). x ``[B, H, T, D]``, positions ``[B, T]``."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    freqs = positions.to(torch.float32)[..., None] * inv                # [B, T, D/2]
    cos = torch.cat([freqs.cos(), freqs.cos()], -1)[:, None].to(x.dtype)  # [B, 1, T, D]
    sin = torch.cat([freqs.sin(), freqs.sin()], -1)[:, None].to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: SparrowDraftConfig, in_dim: int):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.theta = cfg.rope_theta
        self.q_proj = nn.Linear(in_dim, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(in_dim, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(in_dim, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)

    def project(self, x, positions):
        """x ``[B, T, in]`` -> q ``[B, H, T, D]``, k/v ``[B, Hkv, T, D]`` (RoPE applied)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        return apply_rope(q, positions, self.theta), apply_rope(k, positions, self.theta), v

    def attend(self, q, k, v, mask):
        """q ``[B, H, Q, D]``, k/v ``[B, Hkv, K, D]``, mask bool ``[B, Q, K]`` (True = may read)."""
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        # A masked-out key must contribute exactly nothing, even if it holds garbage.
        k = k.masked_fill(~mask.any(1)[:, None, :, None], 0.0)
        v = v.masked_fill(~mask.any(1)[:, None, :, None], 0.0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        b, h, n, d = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(b, n, h * d))


class MLP(nn.Module):
    def __init__(self, cfg: SparrowDraftConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftLayer(nn.Module):
    """vLLM eagle3 ``LlamaDecoderLayer``: the first takes ``concat[e, x]`` (2*hidden), later
    ones are plain Llama layers fed through the fused add-norm."""

    def __init__(self, cfg: SparrowDraftConfig, first: bool):
        super().__init__()
        self.first, self.norm_before_residual = first, cfg.norm_before_residual
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(h, eps)
        if first:
            self.hidden_norm = RMSNorm(h, eps)
        self.self_attn = Attention(cfg, 2 * h if first else h)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.mlp = MLP(cfg)

    def forward(self, embeds, hidden, residual, positions, mask, past=None, query_from: int = 0):
        """Returns ``(mlp_out, residual, (k, v))`` for tokens ``[query_from:]``; k/v cover all
        ``T`` new tokens (``past`` keys come first in ``mask``'s key axis)."""
        if self.first:
            e = self.input_layernorm(embeds)
            if self.norm_before_residual:
                x = self.hidden_norm(hidden)
                residual = x
            else:
                residual = hidden
                x = self.hidden_norm(hidden)
            x = torch.cat([e, x], -1)
        else:
            residual = hidden + residual
            x = self.input_layernorm(residual)
        q, k, v = self.self_attn.project(x, positions)
        kk = k if past is None else torch.cat([past[0], k], 2)
        vv = v if past is None else torch.cat([past[1], v], 2)
        a = self.self_attn.attend(q[:, :, query_from:], kk, vv, mask)
        residual = a + residual[:, query_from:]
        return self.mlp(self.post_attention_layernorm(residual)), residual, (k, v)


class SparrowDraftModel(nn.Module):
    """State dict names are vLLM eagle3's: ``fc``, ``midlayer.*``, ``layers.{i}.*`` (i >= 1),
    ``norm``, ``lm_head``, ``d2t``, ``t2d``. ``embed_tokens`` (the target's matrix) is a
    non-persistent buffer: shared with the target, never saved."""

    def __init__(self, cfg: SparrowDraftConfig, embed_tokens: torch.Tensor | None = None):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.fc = nn.Linear(len(cfg.anchor_layers) * cfg.target_hidden_size, h, bias=False)
        self.midlayer = DraftLayer(cfg, first=True)
        self.layers = nn.ModuleDict({str(i): DraftLayer(cfg, first=False) for i in range(1, cfg.num_layers)})
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(h, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(cfg.target_vocab_size, dtype=torch.bool))
        if embed_tokens is None:
            embed_tokens = torch.zeros(cfg.target_vocab_size, h)
        self.register_buffer("embed_tokens", embed_tokens.detach().float(), persistent=False)

    # ---- vocabulary ----------------------------------------------------------------------
    def set_vocab(self, draft_to_target: torch.Tensor) -> None:
        """``draft_to_target [draft_vocab]``: the target id of each draft id (ascending)."""
        ids = draft_to_target.long()
        self.d2t.copy_(ids - torch.arange(len(ids)))
        self.t2d.zero_()
        self.t2d[ids] = True

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def target_to_draft(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Draft id of each target id, -1 where the target token is not in the draft vocab."""
        table = torch.full((self.config.target_vocab_size,), -1, dtype=torch.long, device=self.d2t.device)
        ids = self.draft_to_target(torch.arange(len(self.d2t), device=self.d2t.device))
        table[ids] = torch.arange(len(ids), device=self.d2t.device)
        return table[target_ids]

    # ---- forward pieces --------------------------------------------------------------------
    def all_layers(self) -> list[DraftLayer]:
        return [self.midlayer, *self.layers.values()]

    def combine_hidden_states(self, aux: torch.Tensor) -> torch.Tensor:
        """IVSB fusion: ``[..., A * target_hidden]`` (anchors ascending) -> ``[..., hidden]``."""
        return self.fc(aux)

    def forward(self, tokens, hidden, positions, mask, past=None, query_from: int = 0):
        """One draft pass.

        tokens ``[B, T]`` target ids; hidden ``[B, T, hidden]`` (``fc`` output for target states,
        ``out_prenorm`` for chain steps); positions ``[B, T]`` RoPE positions; mask bool
        ``[B, T - query_from, P + T]`` over (past keys, new keys); past: per layer ``(k, v)``
        ``[B, Hkv, P, D]`` or None. Returns ``(out_prenorm [B, T - query_from, hidden], kv)``
        where kv is the per-layer ``(k, v)`` of the T new tokens. ``query_from`` skips the
        last layer's attention/MLP for the first tokens (their K/V are still computed).
        """
        embeds = F.embedding(tokens, self.embed_tokens).to(hidden.dtype)
        layers = self.all_layers()
        h, res, kvs = hidden, None, []
        for i, layer in enumerate(layers):
            qf = query_from if i == len(layers) - 1 else 0
            m = mask if i == len(layers) - 1 else self._full_rows_mask(mask, query_from)
            h, res, kv = layer(embeds, h, res, positions, m, None if past is None else past[i], qf)
            kvs.append(kv)
        return h + res, kvs

    @staticmethod
    def _full_rows_mask(mask, query_from):
        if query_from == 0:
            return mask
        raise NotImplementedError("query_from > 0 needs num_layers == 1 (use chunked prefill)")

    def logits(self, out_prenorm: torch.Tensor) -> torch.Tensor:
        """``[..., hidden]`` -> ``[..., draft_vocab]``."""
        return self.lm_head(self.norm(out_prenorm))

    def greedy(self, out_prenorm: torch.Tensor) -> torch.Tensor:
        """Greedy draft token as a *target* id, ``[...]``."""
        return self.draft_to_target(self.logits(out_prenorm).argmax(-1))


# ---- VATA masks ---------------------------------------------------------------------------
def causal_window_mask(n: int, window: int, valid: torch.Tensor | None = None, query_from: int = 0) -> torch.Tensor:
    """Rows ``query_from..n-1`` x keys ``0..n-1``: query i reads keys i-W+1..i (and only
    ``valid`` ones, itself always). Indices are rows of the stored sequence (text indices for
    Sparrow). ``[n - query_from, n]``, or ``[B, ., .]`` with ``valid [B, n]`` (on its device)."""
    i = torch.arange(n, device=valid.device if valid is not None else None)
    d = i[query_from:, None] - i[None, :]
    m = (d >= 0) & (d < window)
    if valid is not None:
        m = m[None] & (valid[:, None, :] | (d == 0)[None])
    return m


def mtp_mask(n: int, step: int, window: int, valid: torch.Tensor, query_from: int = 0) -> torch.Tensor:
    """Mask of MTP step ``step`` (>= 2) over keys ``[step-1 keys (n), chain keys of steps 2..step
    (n - query_from each)]``; rows are the origins ``query_from..n-1``.

    Origin j's query sits at index j+step-1. It reads step-1 (target-state) keys at indices
    i <= j inside the window, and its *own* chain keys (written at j+r-1 by steps
    r = 2..step) inside the window, exactly as a chain at inference does.
    valid ``[B, n]`` -> ``[B, n - query_from, n + (step - 1)(n - query_from)]``.
    """
    i = torch.arange(n, device=valid.device)
    j = i[query_from:]
    d = (j + step - 1)[:, None] - i[None, :]
    base = (i[None, :] <= j[:, None]) & (d < window)
    base = base[None] & valid[:, None, :]
    m = len(j)
    eye = torch.eye(m, dtype=torch.bool, device=valid.device)
    chain = [(eye & (step - r < window))[None].expand(valid.shape[0], m, m) for r in range(2, step + 1)]
    return torch.cat([base] + chain, -1)


def shift(x: torch.Tensor, s: int, fill=0) -> torch.Tensor:
    """``y[:, j] = x[:, j + s]`` (``fill`` past the end); x ``[B, n, ...]``."""
    if s == 0:
        return x
    pad = torch.full_like(x[:, :s], fill)
    return torch.cat([x[:, s:], pad], 1)


def mtp_unroll(model: SparrowDraftModel, ids, g, positions, valid, depth: int, query_from: int = 0):
    """MTP / EAGLE-3 training-time test over whole sequences.

    ids ``[B, n]`` token at each stored position; g ``[B, n, hidden]`` fused target states;
    positions ``[B, n]`` RoPE positions; valid ``[B, n]``. Step s (1-based) at origin j is
    the draft's s-th chain step after the target state at j: input token ``ids[j+s]``
    (teacher forcing: equals the drafted token whenever the chain is still accepted),
    hidden ``g[j]`` (s=1) or the previous step's out_prenorm, RoPE position
    ``positions[j] + s - 1``; it predicts ``ids[j+s+1]``. Only origins ``query_from..n-1`` are
    computed (rows before only provide K/V; needs num_layers == 1 unless 0). Returns
    ``out_prenorm`` per step, each ``[B, n - query_from, hidden]``.
    """
    if model.config.num_layers > 1 and query_from:
        raise ValueError("query_from > 0 needs num_layers == 1")
    window = model.config.window_size if model.config.attention == "text_window" else NO_WINDOW
    n = ids.shape[1]
    outs, past = [], None
    hidden = g
    for s in range(1, depth + 1):
        if s == 1:
            mask = causal_window_mask(n, window, valid, query_from)
            prenorm, kvs = model(shift(ids, 1), g, positions, mask, query_from=query_from)
        else:
            mask = mtp_mask(n, s, window, valid, query_from)
            prenorm, kvs = model(shift(ids, s)[:, query_from:], hidden, positions[:, query_from:] + (s - 1),
                                 mask, past)
        past = kvs if past is None else [(torch.cat([pk, k], 2), torch.cat([pv, v], 2))
                                         for (pk, pv), (k, v) in zip(past, kvs)]
        outs.append(prenorm)
        hidden = prenorm
    return outs
