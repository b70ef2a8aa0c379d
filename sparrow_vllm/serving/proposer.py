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
from dataclasses import dataclass

import numpy as np
import torch

from sparrow_vllm.serving.capture import StateCapture
from sparrow_vllm.serving.window import TextWindowContext, chain_windows, first_pass_windows, text_window_context
from sparrow_vllm.serving.text_positions import RequestText
from sparrow_vllm.serving.config import sparrow_config_of

# vLLM 0.32: vllm.v1.spec_decode.eagle.EagleProposer (swapped in by vllm_compat).
from vllm.forward_context import set_forward_context
from vllm.v1.spec_decode.eagle import EagleProposer


class SparrowProposer(EagleProposer):
    def __init__(self, vllm_config, device, runner=None):
        super().__init__(vllm_config, device, runner)
        self.runner = runner
        self.config = sparrow_config_of(vllm_config.speculative_config)
        if self.config is None:
            raise RuntimeError("sparrow-vllm: the engine's speculative config carries no Sparrow "
                               "config (vllm_compat patch 2 did not run)")
        self.window_size = self.config.window_size
        # RoPE range of the draft (its config's max_position_embeddings): a text index past it
        # (a request with more text tokens than the draft was configured for) takes the last
        # position, so the draft keeps running where vLLM would index past its RoPE table.
        self._max_position = int(getattr(self.draft_model_config.hf_config, "max_position_embeddings", 0) or 0)
        self._requests: dict[str, RequestText] = {}
        # SPARROW_DEBUG_DUMP=file: append the draft inputs of every step as JSON lines
        # (tests use it to check that no visual position ever reaches the draft).
        self._dump_path = os.environ.get("SPARROW_DEBUG_DUMP")
        # For tests and debugging: the draft inputs of the last propose() call.
        self.last_inputs: dict | None = None
        # SPARROW_CAPTURE=dir: write the target's anchor states of every verified token
        # (training data from the serving engine; serving/capture.py).
        self._capture = StateCapture.from_env(len(self.config.anchor_layers))
        logging.getLogger("vllm.sparrow").info(
            "SparrowProposer active: window_size=%d anchor_layers=%s k=%d",
            self.window_size, self.config.anchor_layers, self.num_speculative_tokens)

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
        """``draft_token_ids [num_reqs, k]``: one pass over the text tokens the target just
        verified (their draft KV written at their own slots), then a chain of ``k`` tokens."""
        k = num_speculative_tokens
        self.num_speculative_tokens = k
        self._last_draft_probs = None
        step = self._step_view(common_attn_metadata, target_token_ids, next_token_ids, num_rejected_tokens_gpu)
        if self._capture is not None:
            self._record(step, target_positions, target_hidden_states)
        rows, ctx, input_ids, positions, last_entry = self._text_entries(step)
        if len(rows) == 0:
            # No text token this step (prefill chunks that are all video): nothing to draft
            # from, and every request is mid-prefill, so vLLM discards these drafts.
            return torch.zeros(step.num_reqs, k, device=step.device, dtype=torch.int64)
        hidden = self.model.combine_hidden_states(target_hidden_states[step.to_dev(rows)])
        if self._dump_path:
            self._dump()
        # The first pass writes the draft KV of every verified text token, k = 0 included:
        # a later step with k > 0 reads it (vLLM's EAGLE proposer does the same).
        last_hidden, prenorm = self._run(input_ids, positions, hidden, ctx)
        has = last_entry >= 0
        # Requests still in prefill after this step (or recomputing their output after a
        # preemption) get throw-away drafts (vLLM discards them): their chain must not write
        # KV (the slots ahead are not theirs yet) nor read unwritten slots; it attends to
        # their first text token only.
        partial = ~has | step.partial
        if k == 0:
            self._prune()
            out = torch.zeros(step.num_reqs, 0, device=step.device, dtype=torch.int64)
            if self._dump_path:
                self._dump_drafts(out, np.where(has, step.last_tidx, -1), partial)
            return out

        # Sample from each request's last text entry (zeros if it had none, e.g. a prefill
        # chunk that is all video; vLLM discards drafts of partial prefills).
        sel = step.to_dev(np.where(has, last_entry, 0))
        keep = step.to_dev(has, prenorm.dtype)[:, None]
        state = prenorm[sel] * keep
        draft, probs = self._sample_draft_tokens(last_hidden[sel] * keep, sampling_metadata)
        drafts, probs_list = [draft], (None if probs is None else [probs])
        for s in range(1, k):
            ctx = self._chain_context(step, s, partial)
            last_hidden, state = self._run(drafts[-1].to(torch.int32), step.to_dev(step.last_tidx + s), state, ctx)
            draft, probs = self._sample_draft_tokens(last_hidden, sampling_metadata)
            drafts.append(draft)
            if probs_list is not None:
                probs_list.append(probs)

        self._prune()
        if probs_list is not None:
            self._last_draft_probs = torch.stack(probs_list, dim=1).contiguous()
        out = torch.stack(drafts, dim=1)
        if self._dump_path:
            self._dump_drafts(out, np.where(has, step.last_tidx, -1), partial)
        return out

    def _record(self, step: "_Step", target_positions: torch.Tensor, target_hidden_states: torch.Tensor) -> None:
        t = target_positions[0] if target_positions.dim() == 2 else target_positions  # M-RoPE: temporal row
        pos = [step.starts[r] + np.arange(step.valid[r]) for r in range(step.num_reqs)]
        self._capture.record(step.req_ids, step.starts, step.valid, step.qsl, step.tokens,
                             t.cpu().numpy().astype(np.int64), target_hidden_states,
                             [rt.is_text(p) for rt, p in zip(step.req_texts, pos)])

    def _step_view(self, cad, target_token_ids, next_token_ids, num_rejected_tokens_gpu) -> "_Step":
        num_reqs = cad.num_reqs
        qsl = cad.query_start_loc_cpu[: num_reqs + 1].numpy().astype(np.int64)
        q_lens = qsl[1:] - qsl[:-1]
        seq_lens = cad.seq_lens[:num_reqs].cpu().numpy().astype(np.int64)
        rejected = (num_rejected_tokens_gpu[:num_reqs].cpu().numpy().astype(np.int64)
                    if num_rejected_tokens_gpu is not None else np.zeros(num_reqs, np.int64))
        block_table = cad.block_table_tensor[:num_reqs]
        req_ids = list(self.runner.input_batch.req_ids[:num_reqs])
        # vLLM's own test for a request whose next token is not sampled this step
        # (gpu_model_runner's discard_request_mask): fewer tokens scheduled than it has.
        known = np.asarray([self.runner.requests[rid].num_tokens for rid in req_ids], dtype=np.int64)
        return _Step(
            cad=cad, num_reqs=num_reqs, device=block_table.device, qsl=qsl,
            starts=seq_lens - q_lens,  # position of each request's first token this step
            valid=q_lens - rejected,  # verified tokens (rejected drafts excluded)
            tokens=target_token_ids.cpu().numpy().astype(np.int64),
            next_tokens=next_token_ids[:num_reqs].cpu().numpy().astype(np.int64),
            block_table=block_table, block_table_cpu=block_table.cpu().numpy(),
            kv_block_size=self._kv_block_size(), max_pos=self.max_model_len - 1,
            req_ids=req_ids, req_texts=[self._request_text(rid) for rid in req_ids],
            partial=seq_lens < known,
        )

    def _text_entries(self, step: "_Step"):
        """The first pass: one draft entry per verified *text* token. Returns ``(rows [n]``
        (their rows in the target's batch), the attention context, ``input_ids [n]``,
        ``positions [n]`` (text indices), ``last_entry [num_reqs]`` (-1: none)``)``."""
        fp = first_pass_windows(step.req_texts, step.starts, step.valid, self.window_size)
        rows, tokens, slots, text_start, q_start = [], [], [], [0], [0]
        last_entry = np.full(step.num_reqs, -1, dtype=np.int64)
        for r, tpos in enumerate(fp.positions):
            if tpos is not None:
                tokens.append(self._tokens_at(step, r, step.req_texts[r].next_text_position(tpos)))
                rows.append(step.qsl[r] + (tpos - step.starts[r]))
                slots.append(step.slots_of(r, tpos))
                last_entry[r] = q_start[-1] + len(tpos) - 1
                step.last_tidx[r] = fp.text_index[r][-1]
            text_start.append(text_start[-1] + (len(fp.window[r]) if tpos is not None else 0))
            q_start.append(q_start[-1] + (len(tpos) if tpos is not None else 0))
        has = [x for x in fp.positions if x is not None]
        rows, slots, tidxs = _cat(rows), _cat(slots), _cat([x for x in fp.text_index if x is not None])
        self._check_slots(step.cad, rows, slots)
        ctx = TextWindowContext(
            slot_mapping=step.to_dev(slots), block_table=step.block_table,
            text_positions=step.to_dev(_cat([w for w in fp.window if w is not None])),
            text_start_loc=step.to_dev(np.asarray(text_start), torch.int32),
            query_start_loc=step.to_dev(np.asarray(q_start), torch.int32),
            query_text_idx=step.to_dev(_cat([q for q in fp.query_idx if q is not None]), torch.int32),
            window_size=self.window_size,
        )
        self.last_inputs = {"positions": _cat(has), "text_index": tidxs, "input_token_ids": _cat(tokens),
                            "target_token_ids": step.tokens[rows], "query_start": q_start}
        return rows, ctx, step.to_dev(_cat(tokens), torch.int32), step.to_dev(tidxs), last_entry

    def _tokens_at(self, step: "_Step", r: int, pos: np.ndarray) -> np.ndarray:
        """Request ``r``'s token at each position ``pos`` (>= this step's first position).

        Inside this step's verified tokens: the batch. Beyond them, the request's own token
        where it is already known (the rest of the prompt in a partial prefill chunk, or the
        earlier output of a request recomputed after preemption); else the token the target
        just sampled, which sits at ``end``. Not ``next_token_ids[r]`` for a partial chunk:
        vLLM passes a backup token there (the request's last known token), not the token at
        ``end``.
        """
        end = step.starts[r] + step.valid[r]
        out = step.tokens[np.minimum(step.qsl[r] + pos - step.starts[r], len(step.tokens) - 1)].copy()
        state, rt = self.runner.requests[step.req_ids[r]], step.req_texts[r]
        for i in np.flatnonzero(pos >= end):
            p = int(pos[i])
            if p < rt.prompt_len:
                out[i] = rt.prompt_token_ids[p]
            elif p - rt.prompt_len < len(state.output_token_ids) and state.output_token_ids[p - rt.prompt_len] >= 0:
                out[i] = state.output_token_ids[p - rt.prompt_len]
            elif p == end:
                out[i] = step.next_tokens[r]
            else:
                raise RuntimeError(f"sparrow-vllm: no token known at position {p} of request "
                                   f"{step.req_ids[r]} (verified up to {end})")
        return out

    def _chain_context(self, step: "_Step", s: int, partial: np.ndarray) -> TextWindowContext:
        """Attention context of chain step ``s`` (1..k-1): each request feeds its previous
        draft token at position ``last_pos + s`` (``window.chain_windows``); a partial
        request's chain writes no KV."""
        last_pos = step.starts + step.valid - 1
        windows = chain_windows(step.req_texts, step.last_tidx, last_pos, s, partial, self.window_size)
        slots = [np.full(1, -1, np.int64) if partial[r] else step.slots_of(r, last_pos[r:r + 1] + s)
                 for r in range(step.num_reqs)]
        return TextWindowContext(
            slot_mapping=step.to_dev(np.concatenate(slots)), block_table=step.block_table,
            text_positions=step.to_dev(np.concatenate(windows)),
            text_start_loc=step.to_dev(np.concatenate([[0], np.cumsum([len(w) for w in windows])]), torch.int32),
            query_start_loc=step.to_dev(np.arange(step.num_reqs + 1), torch.int32),
            query_text_idx=step.to_dev(np.asarray([len(w) - 1 for w in windows]), torch.int32),
            window_size=self.window_size,
        )

    def _dump(self) -> None:
        li = self.last_inputs
        q_start = li["query_start"]
        with open(self._dump_path, "a") as f:
            for r, rid in enumerate(self.runner.input_batch.req_ids[: len(q_start) - 1]):
                a, b = q_start[r], q_start[r + 1]
                f.write(json.dumps({
                    "req_id": rid,
                    "prompt_token_ids_len": self._requests[rid].prompt_len,
                    "positions": li["positions"][a:b].tolist(),
                    "target_token_ids": li["target_token_ids"][a:b].tolist(),
                    "input_token_ids": li["input_token_ids"][a:b].tolist(),
                    "text_index": li["text_index"][a:b].tolist(),
                }) + "\n")

    def _dump_drafts(self, drafts: torch.Tensor, origin: np.ndarray, partial: np.ndarray) -> None:
        """One line per request: its drafts, drafted from text index ``origin`` (-1: none);
        ``partial``: vLLM discards them (mid-prefill)."""
        with open(self._dump_path, "a") as f:
            for r, (rid, row) in enumerate(zip(self.runner.input_batch.req_ids, drafts.cpu().tolist())):
                f.write(json.dumps({"req_id": rid, "draft_token_ids": row, "origin_text_index": int(origin[r]),
                                    "partial": bool(partial[r])}) + "\n")

    def _run(self, input_ids, positions, hidden, ctx):
        if self._max_position:
            positions = positions.clamp(max=self._max_position - 1)
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
        from sparrow_vllm.serving.model import split_kv_cache

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


def _cat(xs: list[np.ndarray], dtype=np.int64) -> np.ndarray:
    return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)


@dataclass
class _Step:
    """One ``propose()`` call's batch, on the host: what the text bookkeeping needs."""

    cad: object  # vLLM CommonAttentionMetadata
    num_reqs: int
    device: torch.device
    qsl: np.ndarray  # [num_reqs + 1] query start locations in the target's batch
    starts: np.ndarray  # [num_reqs] position of each request's first token this step
    valid: np.ndarray  # [num_reqs] verified tokens this step
    tokens: np.ndarray  # [num_tokens] target_token_ids
    next_tokens: np.ndarray  # [num_reqs] the token each request samples next
    block_table: torch.Tensor
    block_table_cpu: np.ndarray
    kv_block_size: int
    max_pos: int
    req_ids: list
    req_texts: list
    partial: np.ndarray  # [num_reqs] bool: mid-prefill (or mid-recompute), nothing sampled
    last_tidx: np.ndarray = None  # [num_reqs] text index of the last verified text token

    def __post_init__(self):
        if self.last_tidx is None:
            self.last_tidx = np.zeros(self.num_reqs, dtype=np.int64)

    def slots_of(self, r: int, pos: np.ndarray) -> np.ndarray:
        """KV slots of request ``r``'s positions (-1 beyond max_model_len: not written)."""
        p = np.minimum(pos, self.max_pos)
        s = self.block_table_cpu[r, p // self.kv_block_size].astype(np.int64) * self.kv_block_size \
            + p % self.kv_block_size
        return np.where(pos <= self.max_pos, s, -1)

    def to_dev(self, a, dtype=torch.int64) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device, dtype=dtype)
