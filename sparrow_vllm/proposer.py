"""SparrowProposer: vLLM's EAGLE proposer, fed text positions only (VATA + IVSB).

vLLM 0.32 (V1 model runner) calls ``propose()`` after every target step with the tokens
the target just verified, their positions and the target's anchor-layer states
(``eagle_aux_hidden_state_layer_ids``, concatenated; vLLM's EAGLE-3 capture). We:

1. keep only the *text* positions of each request (from its multimodal placeholder
   ranges) and pair each with the next text token, EAGLE-style: draft input at text
   position ``p`` is ``(token at the next text position, fc(anchor states at p))``;
2. run the draft over those entries, writing its KV at the entries' own slots (visual
   slots are never written nor read), RoPE position = text index;
3. chain ``k`` draft tokens per request, feeding the draft's pre-norm state back.

Verification and rejection sampling stay vLLM's own: losslessness does not depend on us.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from sparrow_vllm.draft_context import TextWindowContext, text_window_context
from sparrow_vllm.text_positions import RequestText

# vLLM 0.32: vllm.v1.spec_decode.eagle.EagleProposer (swapped in by vllm_compat).
from vllm.forward_context import set_forward_context
from vllm.v1.spec_decode.eagle import EagleProposer


class SparrowProposer(EagleProposer):
    def __init__(self, vllm_config, device, runner=None):
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        sparrow = getattr(self.draft_model_config.hf_config, "sparrow", None) or {}
        self.window_size = int(sparrow.get("window_size", 128))
        self._requests: dict[str, RequestText] = {}
        # SPARROW_DEBUG_DUMP=file: append the draft inputs of every step as JSON lines
        # (tests use it to check that no visual position ever reaches the draft).
        self._dump_path = os.environ.get("SPARROW_DEBUG_DUMP")
        # For tests and debugging: the draft inputs of the last propose() call.
        self.last_inputs: dict | None = None
        logging.getLogger("vllm.sparrow").info(
            "SparrowProposer active: window_size=%d anchor_layers=%s k=%d",
            self.window_size, sparrow.get("anchor_layers"), self.num_speculative_tokens)

    # --- per-request text bookkeeping -------------------------------------------------
    def _request_text(self, req_id: str) -> RequestText:
        state = self.runner.requests[req_id]
        rt = self._requests.get(req_id)
        prompt = state.prompt_token_ids
        if rt is None or rt.prompt_len != len(prompt):
            ranges = []
            for f in state.mm_features or ():
                pr = f.mm_position
                is_embed = None if pr.is_embed is None else pr.is_embed.cpu().numpy()
                ranges.append((pr.offset, pr.length, is_embed))
            rt = RequestText.build(prompt, ranges)
            self._requests[req_id] = rt
        return rt

    def _prune(self) -> None:
        if len(self._requests) > 4 * max(1, len(self.runner.requests)):
            for rid in [r for r in self._requests if r not in self.runner.requests]:
                del self._requests[rid]

    # --- the proposer ----------------------------------------------------------------
    def propose(
        self,
        num_speculative_tokens,
        target_token_ids: torch.Tensor,  # [num_tokens]
        target_positions: torch.Tensor,  # [num_tokens] or [3, num_tokens] (M-RoPE)
        target_hidden_states: torch.Tensor,  # [num_tokens, num_anchors * target_hidden]
        next_token_ids: torch.Tensor,  # [num_reqs]
        token_indices_to_sample,
        common_attn_metadata,
        sampling_metadata,
        mm_embed_inputs=None,
        num_rejected_tokens_gpu: torch.Tensor | None = None,
        slot_mappings=None,
    ) -> torch.Tensor:
        k = num_speculative_tokens
        self.num_speculative_tokens = k
        self._last_draft_probs = None
        cad = common_attn_metadata
        num_reqs = cad.num_reqs
        device = target_hidden_states.device
        W = self.window_size

        qsl = cad.query_start_loc_cpu[: num_reqs + 1].numpy().astype(np.int64)
        q_lens = qsl[1:] - qsl[:-1]
        seq_lens = cad.seq_lens[:num_reqs].cpu().numpy().astype(np.int64)
        starts = seq_lens - q_lens  # position of each request's first token this step
        rejected = (num_rejected_tokens_gpu[:num_reqs].cpu().numpy().astype(np.int64)
                    if num_rejected_tokens_gpu is not None else np.zeros(num_reqs, np.int64))
        valid = q_lens - rejected
        tokens = target_token_ids.cpu().numpy().astype(np.int64)
        next_tokens = next_token_ids[:num_reqs].cpu().numpy().astype(np.int64)
        block_table = cad.block_table_tensor[:num_reqs]
        block_table_cpu = block_table.cpu().numpy()
        kv_block_size = self._kv_block_size()
        max_pos = self.max_model_len - 1

        def slots_of(r: int, pos: np.ndarray) -> np.ndarray:
            ok = pos <= max_pos
            p = np.minimum(pos, max_pos)
            s = block_table_cpu[r, p // kv_block_size].astype(np.int64) * kv_block_size + p % kv_block_size
            return np.where(ok, s, -1)

        entry_rows, entry_tokens, entry_tidx, entry_slots, entry_pos = [], [], [], [], []
        text_pos_chunks, text_start, q_start, q_tidx = [], [0], [0], []
        last_entry = np.full(num_reqs, -1, dtype=np.int64)
        last_tidx = np.zeros(num_reqs, dtype=np.int64)
        last_pos = starts + valid - 1
        req_texts = []
        n_entries = 0
        for r in range(num_reqs):
            rt = self._request_text(self.runner.input_batch.req_ids[r])
            req_texts.append(rt)
            pos = starts[r] + np.arange(valid[r], dtype=np.int64)
            is_text = rt.is_text(pos)
            tpos = pos[is_text]
            if len(tpos):
                end = starts[r] + valid[r]  # position of next_token_ids[r]
                nxt = rt.next_text_position(tpos)
                tok = np.where(nxt < end, tokens[np.minimum(qsl[r] + nxt - starts[r], len(tokens) - 1)],
                               np.where(nxt == end, next_tokens[r], rt.prompt_token_ids[np.minimum(nxt, rt.prompt_len - 1)]))
                tidx = rt.text_index(tpos)
                base = max(0, int(tidx[0]) - W + 1)
                window = rt.positions_of(np.arange(base, int(tidx[-1]) + 1, dtype=np.int64))
                entry_rows.append(qsl[r] + (tpos - starts[r]))
                entry_tokens.append(tok)
                entry_tidx.append(tidx)
                entry_slots.append(slots_of(r, tpos))
                entry_pos.append(tpos)
                text_pos_chunks.append(window)
                q_tidx.append(tidx - base)
                n_entries += len(tpos)
                last_entry[r] = n_entries - 1
                last_tidx[r] = tidx[-1]
            text_start.append(text_start[-1] + (len(text_pos_chunks[-1]) if len(tpos) else 0))
            q_start.append(n_entries)

        cat = lambda xs, dt=np.int64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        rows = cat(entry_rows)
        self._check_slots(cad, rows, cat(entry_slots))
        to_dev = lambda a, dt=torch.int64: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731

        hidden = self.model.combine_hidden_states(target_hidden_states[to_dev(rows)])
        ctx = TextWindowContext(
            slot_mapping=to_dev(cat(entry_slots)),
            block_table=block_table,
            text_positions=to_dev(cat(text_pos_chunks)),
            text_start_loc=to_dev(np.asarray(text_start), torch.int32),
            query_start_loc=to_dev(np.asarray(q_start), torch.int32),
            query_text_idx=to_dev(cat(q_tidx), torch.int32),
            window_size=W,
        )
        input_ids = to_dev(cat(entry_tokens), torch.int32)
        positions = to_dev(cat(entry_tidx))
        self.last_inputs = {"positions": cat(entry_pos), "text_index": cat(entry_tidx),
                            "input_token_ids": cat(entry_tokens), "target_token_ids": tokens[rows]}
        if self._dump_path:
            self._dump(q_start)
        last_hidden, prenorm = self._run(input_ids, positions, hidden, ctx)

        # Rows to sample from: each request's last text entry (zeros if it had none, e.g.
        # a prefill chunk that is all video; vLLM discards drafts of partial prefills).
        has = last_entry >= 0
        sel = to_dev(np.where(has, last_entry, 0))
        sample_hidden = last_hidden[sel] * to_dev(has, last_hidden.dtype)[:, None]
        state = prenorm[sel] * to_dev(has, prenorm.dtype)[:, None]
        if k == 0:
            return torch.empty(num_reqs, 0, device=device, dtype=torch.int64)
        draft, probs = self._sample_draft_tokens(sample_hidden, sampling_metadata)
        drafts, probs_list = [draft], (None if probs is None else [probs])

        # Requests still in prefill after this step get throw-away drafts (vLLM discards
        # them): their chain must not write KV (the slots ahead are not theirs yet) nor read
        # unwritten slots; it attends to their first text token only.
        partial = ~has | (starts + valid < np.asarray([rt.prompt_len for rt in req_texts], dtype=np.int64))
        for step in range(1, k):
            chain_pos = last_pos + step  # position of the token being fed
            chain_tidx = last_tidx + step
            windows, t_start = [], [0]
            for r, rt in enumerate(req_texts):
                q = int(chain_tidx[r])
                base = max(0, q - W + 1)
                if not partial[r]:
                    lt = int(last_tidx[r])
                    known = rt.positions_of(np.arange(base, lt + 1, dtype=np.int64))
                    chain = last_pos[r] + np.arange(max(base, lt + 1), q + 1, dtype=np.int64) - lt
                    w = np.concatenate([known, chain])
                else:
                    w = rt.positions_of(np.zeros(1, dtype=np.int64))
                windows.append(w)
                t_start.append(t_start[-1] + len(w))
            ctx = TextWindowContext(
                slot_mapping=to_dev(np.concatenate([
                    np.full(1, -1, np.int64) if partial[r] else slots_of(r, chain_pos[r:r + 1])
                    for r in range(num_reqs)])),
                block_table=block_table,
                text_positions=to_dev(np.concatenate(windows)),
                text_start_loc=to_dev(np.asarray(t_start), torch.int32),
                query_start_loc=to_dev(np.arange(num_reqs + 1), torch.int32),
                query_text_idx=to_dev(np.asarray([len(w) - 1 for w in windows]), torch.int32),
                window_size=W,
            )
            last_hidden, state = self._run(drafts[-1].to(torch.int32), to_dev(chain_tidx), state, ctx)
            draft, probs = self._sample_draft_tokens(last_hidden, sampling_metadata)
            drafts.append(draft)
            if probs_list is not None:
                probs_list.append(probs)

        self._prune()
        if probs_list is not None:
            self._last_draft_probs = torch.stack(probs_list, dim=1).contiguous()
        return torch.stack(drafts, dim=1)

    def _dump(self, q_start) -> None:
        li = self.last_inputs
        with open(self._dump_path, "a") as f:
            for r, rid in enumerate(self.runner.input_batch.req_ids[: len(q_start) - 1]):
                a, b = q_start[r], q_start[r + 1]
                f.write(json.dumps({
                    "req_id": rid,
                    "prompt_token_ids_len": self._requests[rid].prompt_len,
                    "positions": li["positions"][a:b].tolist(),
                    "target_token_ids": li["target_token_ids"][a:b].tolist(),
                    "text_index": li["text_index"][a:b].tolist(),
                }) + "\n")

    def _run(self, input_ids, positions, hidden, ctx):
        with set_forward_context(None, self.vllm_config, num_tokens=int(input_ids.shape[0])), \
                text_window_context(ctx):
            return self.model(input_ids=input_ids, positions=positions, hidden_states=hidden)

    def _kv_block_size(self) -> int:
        if getattr(self, "_kv_bs", None):
            return self._kv_bs
        layer_name = next(iter(sorted(self._draft_attn_layer_names)))
        from vllm.config import get_layers_from_vllm_config
        from vllm.model_executor.layers.attention import Attention

        attn = get_layers_from_vllm_config(self.vllm_config, Attention)[layer_name]
        from sparrow_vllm.vllm_draft import split_kv_cache

        key_cache, _ = split_kv_cache(attn.kv_cache, attn.num_kv_heads, attn.head_size)
        self._kv_bs = int(key_cache.shape[1])
        return self._kv_bs

    def _check_slots(self, cad, rows: np.ndarray, slots: np.ndarray) -> None:
        """Every step: the positions we derived (seq_lens - query_lens, text filtering) must
        give the slots vLLM itself computed for these tokens; a disagreement would make the
        draft write and read the wrong cache slots."""
        if len(rows) == 0:
            return
        theirs = cad.slot_mapping[torch.from_numpy(rows).to(cad.slot_mapping.device)].cpu().numpy()
        if not np.array_equal(theirs.astype(np.int64), slots):
            raise RuntimeError(
                "sparrow-vllm: draft KV slot arithmetic disagrees with vLLM's slot_mapping "
                f"(ours {slots[:8]}, vLLM {theirs[:8]}); this vLLM build is not supported."
            )
