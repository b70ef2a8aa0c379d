"""Mean accepted length inside vLLM vs ``sparrow eval-draft`` on the same samples.

Both run greedy with the same draft and k over the samples of one ``sparrow data`` split
(the target's self-distilled responses): vLLM through ``LLM.generate`` (batch 1, so every
step is a plain chain), eval-draft offline. A gap larger than a few percent means the
proposer and the training-time simulation disagree about what the draft sees.

    python benchmarks/check_tau.py --data DATA_DIR --draft DRAFT_DIR --eval EVAL.json --k 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def sample_specs(data_dir: Path) -> list[dict]:
    m = json.loads((data_dir / "manifest.json").read_text())
    specs = []
    for shard in sorted(m["shards"].values(), key=lambda s: s["file"]):
        for sid in shard["samples"]:
            split, index, frames = sid.split("-")[:3]
            specs.append({"split": split, "index": int(index), "frames": int(frames.rstrip("f"))})
    return specs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--eval", type=Path, required=True, help="eval-draft JSON for the same data/draft")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--method", default="sparrow", choices=["sparrow", "eagle3"])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "check_tau.json")
    args = ap.parse_args()

    from sparrow_vllm.offline import run_engine_subprocess
    from sparrow_vllm.target.build import build_target

    specs = sample_specs(args.data)
    max_frames = max(s["frames"] for s in specs)
    cells = [{"prompts": [s]} for s in specs]  # one request at a time: batch 1
    run = run_engine_subprocess({
        "target": str(build_target()), "cells": cells, "sampling": {"max_tokens": 64},
        "engine": {"max_num_seqs": 1, "max_model_len": max_frames * 8 + 512},
        "speculative_config": {"method": args.method, "model": str(args.draft), "num_speculative_tokens": args.k},
    }, timeout=6 * 3600)
    drafts = sum(c["spec"]["num_drafts"] for c in run["cells"])
    accepted = sum(c["spec"]["num_accepted_tokens"] for c in run["cells"])
    tau_vllm = 1 + accepted / drafts if drafts else None
    ev = json.loads(args.eval.read_text())
    tau_eval = ev["results"][str(args.k)]["tau"] if "results" in ev else ev[str(args.k)]["tau"]
    res = {"data": str(args.data), "draft": str(args.draft), "k": args.k, "samples": len(specs),
           "tau_vllm": tau_vllm, "tau_eval_draft": tau_eval, "num_drafts_vllm": drafts,
           "relative_gap": (tau_vllm - tau_eval) / tau_eval if tau_vllm else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
