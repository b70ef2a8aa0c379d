"""``sparrow eval-draft``: greedy speculative decoding simulated offline (no vLLM).

The data holds the target's greedy trajectory and its hidden states (self-distilled), so a
target verification step is a lookup. Per round, with the target having just sampled the
token at draft index c (so target states exist for indices 0..c-1):

1. the draft K/V at every index j <= c-1 comes from ``(token[j+1], fc(h[j]))`` at RoPE
   position ``positions[j]`` (``propose.prefill``; indices are text rows for Sparrow, all rows
   for the baseline);
2. the draft proposes a greedy chain of k tokens from origin c-1 (``propose.draft_chain``);
3. accepted = longest prefix equal to the target's greedy tokens ``token[c+1..]``; the
   target emits accepted + 1 tokens (bonus), c advances by that much.

Mean accepted length tau = tokens per target step = 1 + accepted drafts per round (vLLM's
``mean acceptance length``). The target's first token (from prefill) is not a round.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.draft.propose import draft_chain, prefill
from sparrow_vllm.draft.train import draft_sequence


@torch.no_grad()
def simulate_sample(model: SparrowDraftModel, sample: dict, ks: list[int]) -> dict[int, list[int]]:
    """Accepted draft count of every round for each k (one sample)."""
    seq = draft_sequence(sample, model.config)
    ids, pos, rs = seq["ids"], seq["positions"], seq["response_start"]
    n = len(ids)
    if rs < 1 or rs >= n:
        return {k: [] for k in ks} | {"to_generate": 0}
    g = model.combine_hidden_states(seq["hidden"].float())
    next_ids = torch.cat([ids[1:], ids.new_zeros(1)])
    first = rs - 1
    prenorm, kv = prefill(model, next_ids, g, pos, query_from=first)
    out = {}
    for k in ks:
        acc = []
        c = rs
        while c < n - 1:
            origin = c - 1
            toks, _ = draft_chain(model, kv, origin, prenorm[origin - first], int(pos[origin]), k)
            limit = min(k, n - 1 - c)
            a = 0
            while a < limit and toks[a] == int(ids[c + 1 + a]):
                a += 1
            acc.append(a)
            c += a + 1
        out[k] = acc
    out["to_generate"] = n - 1 - rs
    return out


@torch.no_grad()
def greedy_drafts(model: SparrowDraftModel, sample: dict, k: int) -> dict[int, list[int]]:
    """The ``k`` greedy draft tokens proposed from every origin of the response:
    ``{origin draft index: tokens}``, where the draft index is the text index for Sparrow
    (what :class:`~sparrow_vllm.serving.proposer.SparrowProposer` logs as ``origin_text_index``)."""
    seq = draft_sequence(sample, model.config)
    ids, pos, rs = seq["ids"], seq["positions"], seq["response_start"]
    if rs < 1 or rs >= len(ids):
        return {}
    g = model.combine_hidden_states(seq["hidden"].float())
    next_ids = torch.cat([ids[1:], ids.new_zeros(1)])
    prenorm, kv = prefill(model, next_ids, g, pos, query_from=rs - 1)
    return {o: draft_chain(model, kv, o, prenorm[o - rs + 1], int(pos[o]), k)[0] for o in range(rs - 1, len(ids) - 1)}


def oracle_rounds(num_to_generate: int, k: int) -> list[int]:
    """Accepted counts of a draft that is always right, for a response with
    ``num_to_generate`` tokens after the prefill's first one (the ceiling of tau)."""
    acc, left = [], num_to_generate
    while left > 0:
        a = min(k, left)
        acc.append(a)
        left -= a + 1
    return acc


def summarize(per_sample: list[dict[int, list[int]]], ks: list[int]) -> dict:
    res = {}
    for k in ks:
        acc = np.array([a for s in per_sample for a in s[k]], dtype=np.int64)
        rounds = len(acc)
        best = np.array([a for s in per_sample for a in oracle_rounds(s["to_generate"], k)], dtype=np.int64)
        res[str(k)] = {
            "tau": float(1 + acc.mean()) if rounds else float("nan"),
            "tau_oracle": float(1 + best.mean()) if len(best) else float("nan"),
            "rounds": int(rounds),
            "accepted": int(acc.sum()),
            "acceptance_per_position": [float((acc >= s).mean()) if rounds else float("nan")
                                        for s in range(1, k + 1)],
        }
    return res


def simulate(model: SparrowDraftModel, samples: list[dict], ks: list[int], progress: bool = True) -> list[dict]:
    """``simulate_sample`` over ``samples``, with a progress bar."""
    from tqdm import tqdm

    return [simulate_sample(model, s, ks) for s in tqdm(samples, desc="eval-draft", disable=not progress)]


def format_table(res: dict, title: str = "") -> str:
    ks = list(res)
    kmax = max(int(k) for k in ks)
    head = "| k | tau | tau (always-right draft) | rounds | " + " | ".join(f"acc@{s}" for s in range(1, kmax + 1)) + " |"
    lines = ([title] if title else []) + [head, "|" + "---|" * (4 + kmax)]
    for k in ks:
        r = res[k]
        accs = [f"{x:.3f}" for x in r["acceptance_per_position"]] + [""] * (kmax - int(k))
        lines.append(f"| {k} | {r['tau']:.3f} | {r['tau_oracle']:.3f} | {r['rounds']} | " + " | ".join(accs) + " |")
    return "\n".join(lines)


def load_for_eval(target_dir, draft_dir, data_dir, limit: int | None = None, window: int | None = None):
    """``(draft model, manifest, samples, target HF config)``, checked to belong together
    (the data was extracted from this target, and holds what the draft reads)."""
    from transformers import AutoConfig

    from sparrow_vllm.draft.data import check_draft_compatible, check_target, load_samples, target_identity
    from sparrow_vllm.draft.export import load_draft

    model = load_draft(draft_dir, target_dir=target_dir)
    if window is not None:  # inference-time window differing from training (study only)
        model.config = model.config.replace(window_size=window)
    manifest, samples = load_samples(data_dir, layers=model.config.anchor_layers, limit=limit)
    if manifest["settings"].get("repeat_answers", 1) > 1:
        raise ValueError(f"{data_dir} was extracted with --repeat-answers: its responses are forced, "
                         "not the target's greedy answers, so they cannot measure acceptance; "
                         "evaluate on data extracted without it")
    target_config = AutoConfig.from_pretrained(str(target_dir))
    check_target(manifest, target_identity(target_dir, target_config), str(data_dir))
    check_draft_compatible(manifest, model.config)
    return model, manifest, samples, target_config


def visual_tokens_of(manifest: dict, samples: list[dict], family) -> int:
    """Visual tokens of the data's videos: from the SparrowWorld length, or (``sparrow data
    --from``: videos of any length) the mean number of non-text prompt positions."""
    st = manifest["settings"]
    if "num_frames" in st:
        return family.visual_tokens(st["num_frames"])
    first = [int(s["response_start"]) for s in samples]  # row of the first response token
    return round(sum(int(s["seq_pos"][r]) - int(s["text_index"][r]) for s, r in zip(samples, first))
                 / max(len(samples), 1))


def run_eval(target_dir, draft_dir, data_dir, ks: list[int], limit: int | None = None,
             out: str | None = None, progress: bool = True, window: int | None = None) -> dict:
    from sparrow_vllm.families import family_of

    model, manifest, samples, target_config = load_for_eval(target_dir, draft_dir, data_dir, limit, window)
    cfg = model.config
    per_sample = simulate(model, samples, ks, progress)
    report = {"draft": str(draft_dir), "data": str(data_dir), "recipe": cfg.recipe,
              "anchor_layers": cfg.anchor_layers, "window_size": cfg.window_size,
              "attention": cfg.attention, "samples": len(samples),
              "visual_tokens": visual_tokens_of(manifest, samples, family_of(target_config)),
              "max_new_tokens": manifest["settings"]["max_new_tokens"],
              "results": summarize(per_sample, ks),
              # accepted drafts of every round, per sample and k: where a mean hides one sample
              # text_before: text rows before the answer (chat history included), so a study can
              # tell how much of an answer the window W cuts
              "per_sample": [{"id": s.get("id"), "to_generate": r["to_generate"],
                              "text_before": int((s["text_index"][: int(s["response_start"])] >= 0).sum()),
                              "accepted": {str(k): r[k] for k in ks}} for s, r in zip(samples, per_sample)]}
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return report
