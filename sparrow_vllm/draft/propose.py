"""Step-by-step draft inference, exactly as vLLM's EAGLE proposer runs it (one sequence).

The draft sequence is the target sequence restricted to the draft's positions (text
positions for Sparrow, all positions for the baseline); ``index`` is an index into it.

* ``prefill``: at every index j whose target state is known, the draft input is
  ``(token[j+1], fc(h[j]))`` at RoPE position ``positions[j]``; this writes the draft K/V at j
  (vLLM's first pass over the verified tokens, which also rewrites any chain K/V there).
* ``draft_chain`` from origin j (the last index with a target state; ``token[j+1]`` is the
  token the target just sampled): d1 = greedy(out_prenorm[j]); step s = 2..k feeds
  ``(d_{s-1}, out_prenorm of step s-1)`` at RoPE position ``positions[j] + s - 1`` and
  index ``q = j + s - 1``; it reads the target-state K/V at indices ``max(0, q-W+1)..j`` and
  the chain's own K/V at ``j+1..q`` (those inside the window). ``full`` attention: W = inf.
"""

from __future__ import annotations

import torch

from sparrow_vllm.draft.model import NO_WINDOW, SparrowDraftModel, causal_window_mask


def window_of(model: SparrowDraftModel) -> int:
    return model.config.window_size if model.config.attention == "text_window" else NO_WINDOW


@torch.no_grad()
def prefill(model: SparrowDraftModel, next_ids, g, positions, query_from: int = 0):
    """next_ids ``[n]`` (token at index j+1), g ``[n, hidden]`` fused target states,
    positions ``[n]``. Returns ``(out_prenorm [n - query_from, hidden], kv)``; kv per layer
    ``(k, v)`` ``[1, Hkv, n, D]``. With ``query_from`` only the later outputs are computed
    (their K/V still cover all n)."""
    n = next_ids.shape[0]
    w = window_of(model)
    if model.config.num_layers == 1:
        i = torch.arange(n, device=next_ids.device)
        q = i[query_from:]
        d = q[:, None] - i[None, :]
        mask = ((d >= 0) & (d < w))[None]
        out, kv = model(next_ids[None], g[None], positions[None], mask, query_from=query_from)
        return out[0], kv
    # Deeper drafts need every row of the earlier layers: full forward, then slice.
    out, kv = model(next_ids[None], g[None], positions[None], causal_window_mask(n, w).to(next_ids.device)[None])
    return out[0, query_from:], kv


@torch.no_grad()
def draft_chain(model: SparrowDraftModel, kv, origin: int, prenorm_origin, position_origin: int, k: int,
                forced_tokens=None):
    """Greedy chain of ``k`` draft tokens (target ids) from ``origin``.

    kv: prefill K/V (indices ``0..origin`` are read); prenorm_origin ``[hidden]``: prefill
    output at origin. ``forced_tokens``: optional list of the token fed at steps 2..k
    (instead of the drafted ones; used to check MTP unroll == inference). Returns
    ``(tokens [k], prenorms [k, hidden])``.
    """
    w = window_of(model)
    tokens = [int(model.greedy(prenorm_origin))]
    prenorms = [prenorm_origin]
    chain_kv: list[tuple[int, list]] = []  # (index, per-layer (k, v) [1, Hkv, 1, D])
    for s in range(2, k + 1):
        q = origin + s - 1
        lo = max(0, q - w + 1)
        keep = [c for c in chain_kv if c[0] >= lo]
        past = []
        for li, (pk, pv) in enumerate(kv):
            ks = [pk[:, :, lo:origin + 1]] + [c[1][li][0] for c in keep]
            vs = [pv[:, :, lo:origin + 1]] + [c[1][li][1] for c in keep]
            past.append((torch.cat(ks, 2), torch.cat(vs, 2)))
        n_keys = past[0][0].shape[2] + 1
        tok = tokens[-1] if forced_tokens is None else int(forced_tokens[s - 2])
        out, new_kv = model(torch.tensor([[tok]]), prenorms[-1][None, None],
                            torch.tensor([[position_origin + s - 1]]),
                            torch.ones(1, 1, n_keys, dtype=torch.bool), past)
        chain_kv.append((q, new_kv))
        prenorms.append(out[0, 0])
        tokens.append(int(model.greedy(out[0, 0])))
    return tokens, torch.stack(prenorms)
