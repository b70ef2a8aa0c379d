"""Mean accepted length inside vLLM vs ``sparrow eval-draft`` on the same samples.

Both run greedy with the same draft and k over the samples of one ``sparrow data`` split
(the target's self-distilled responses): vLLM through ``LLM.generate``, one request at a
time (batch 1, so every step is a plain chain and vLLM's metrics can be read per sample),
eval-draft's simulation in this process. Per sample it records whether vLLM's greedy
output equals the response stored in the data (transformers' greedy output: the two only
compare like for like when they are the same), and both tau. A gap larger than a few
percent on matching samples means the proposer and the training-time simulation disagree
about what the draft sees.

    python benchmarks/check_tau.py --data DATA_DIR --draft DRAFT_DIR --k 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def sample_spec(sample_id: str) -> dict:
    split, index, frames = sample_id.split("-")[:3]
    return {"split": split, "index": int(index), "frames": int(frames.rstrip("f"))}


def eval_draft_per_sample(target: Path, draft: Path, data: Path, k: int) -> list[dict]:
    """``sparrow eval-draft``'s simulation, kept per sample (rounds, accepted, response)."""
    from sparrow_vllm.draft.evaluate import load_for_eval, simulate_sample
    from sparrow_vllm.draft.train import draft_sequence

    model, _, samples, _ = load_for_eval(target, draft, data)
    rows = []
    for s in samples:
        seq = draft_sequence(s, model.config)
        acc = simulate_sample(model, s, [k])[k]
        rows.append({"id": s["id"], "response": seq["ids"][seq["response_start"]:].tolist(),
                     "rounds": len(acc), "accepted": int(sum(acc))})
    return rows


def tau(accepted: int, rounds: int) -> float | None:
    return 1 + accepted / rounds if rounds else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--method", default="sparrow", choices=["sparrow", "eagle3"])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "check_tau.json")
    args = ap.parse_args()

    from sparrow_vllm.draft.data import load_manifest
    from sparrow_vllm.families import family_of
    from sparrow_vllm.harness.offline import run_engine_subprocess

    manifest = load_manifest(args.data)
    target = Path(manifest["target"]["path"])  # the target the data was extracted from
    visual_tokens = family_of(target).visual_tokens
    offline = eval_draft_per_sample(target, args.draft, args.data, args.k)
    specs = [sample_spec(r["id"]) for r in offline]
    max_new = manifest["settings"]["max_new_tokens"]
    run = run_engine_subprocess({
        "target": str(target), "cells": [{"prompts": [s]} for s in specs],
        "sampling": {"max_tokens": max_new},
        "engine": {"max_num_seqs": 1, "max_model_len": visual_tokens(max(s["frames"] for s in specs)) + 512,
                   "max_num_batched_tokens": max(8192, visual_tokens(max(s["frames"] for s in specs)) + 512)},
        "speculative_config": {"method": args.method, "model": str(args.draft), "num_speculative_tokens": args.k},
    }, timeout=6 * 3600)

    per_sample = []
    for r, cell in zip(offline, run["cells"]):
        out = cell["outputs"][0]["token_ids"]
        spec = cell["spec"]
        per_sample.append({
            "id": r["id"], "same_output": out == r["response"], "output_tokens": len(out),
            "first_difference": next((i for i, (a, b) in enumerate(zip(out, r["response"])) if a != b),
                                     None if len(out) == len(r["response"]) else min(len(out), len(r["response"]))),
            "vllm_tokens": out, "data_tokens": r["response"],
            "vllm": {"rounds": spec["num_drafts"], "accepted": spec["num_accepted_tokens"],
                     "tau": tau(spec["num_accepted_tokens"], spec["num_drafts"])},
            "eval_draft": {"rounds": r["rounds"], "accepted": r["accepted"], "tau": tau(r["accepted"], r["rounds"])},
        })

    def pooled(rows, side):
        return tau(sum(x[side]["accepted"] for x in rows), sum(x[side]["rounds"] for x in rows))

    same = [x for x in per_sample if x["same_output"]]
    summary = {}
    for name, rows in (("all", per_sample), ("same_output", same)):
        tv, te = pooled(rows, "vllm"), pooled(rows, "eval_draft")
        summary[name] = {"samples": len(rows), "tau_vllm": tv, "tau_eval_draft": te,
                         "relative_gap": (tv - te) / te if tv and te else None}
    res = {"data": str(args.data), "draft": str(args.draft), "method": args.method, "k": args.k,
           "visual_tokens": visual_tokens(manifest["settings"]["num_frames"]), "summary": summary, "per_sample": per_sample}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    for x in per_sample:
        print(f"{x['id']:32s} same={x['same_output']!s:5s} diff@{x['first_difference']} vllm {x['vllm']['accepted']:3d}/{x['vllm']['rounds']:3d} "
              f"eval {x['eval_draft']['accepted']:3d}/{x['eval_draft']['rounds']:3d}")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
