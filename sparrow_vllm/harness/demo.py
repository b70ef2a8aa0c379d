"""``sparrow demo``: a SparrowWorld video question answered through vLLM on the embedded
target, without and with Sparrow speculation, side by side in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="answer a video question through vLLM, with and without Sparrow")
    from sparrow_vllm.families import DEFAULT_FAMILY, FAMILY_NAMES

    p.add_argument("--arch", choices=FAMILY_NAMES, default=DEFAULT_FAMILY, help="which embedded target")
    p.add_argument("--index", type=int, default=3, help="SparrowWorld test-split sample")
    p.add_argument("--visual-tokens", type=int, default=128,
                   help="~visual tokens of the video; 128 = the 16-frame clips the Qwen2.5-VL target was trained on")
    p.add_argument("--question", default=None, help="default: the sample's own question")
    p.add_argument("--k", type=int, default=None, help="num_speculative_tokens (default: the draft's)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(run=run)


def run(args) -> int:
    from sparrow_vllm.harness.offline import run_engine_subprocess, world_prompt_specs
    from sparrow_vllm.serving.config import SparrowConfigError, default_draft_for
    from sparrow_vllm.families import get_family
    from sparrow_vllm.world import make_sample

    family = get_family(args.arch)
    target = str(family.build_target())
    frames = max(16, family.frames_for_visual_tokens(args.visual_tokens))
    sample = make_sample("test", args.index, frames)
    question = args.question or sample.question
    print(f"target: {target}")
    print(f"video:  SparrowWorld test #{args.index}, {frames} frames 112x112 = "
          f"{family.visual_tokens(frames)} visual tokens")
    print(f"Q: {question}")
    base = {"target": target, "prompts": world_prompt_specs("test", [args.index], frames, question),
            "sampling": {"max_tokens": args.max_tokens}, "engine": {"max_num_seqs": 1}}
    runs = {"no speculation": dict(base)}
    try:
        draft = default_draft_for(target)
        sc = {"method": "sparrow"}
        if args.k:
            sc["num_speculative_tokens"] = args.k
        runs["sparrow"] = dict(base, speculative_config=sc)
    except SparrowConfigError as e:
        draft = None
        print(f"(no Sparrow draft available yet: {e})")
    results = {}
    for name, spec in runs.items():
        print(f"... running vLLM ({name})", flush=True)
        results[name] = run_engine_subprocess(spec)
    print()
    for name, r in results.items():
        o = r["outputs"][0]
        print(f"[{name}] A: {o['text'].strip()}")
        line = (f"[{name}] {len(o['token_ids'])} tokens; prefill+first token {o['ttft_s']:.2f} s; "
                f"decode {o['decode_tok_s']:.1f} tok/s")
        if r["spec"]["mean_accepted_length"]:
            acc = ", ".join(f"{a:.2f}" for a in r["spec"]["acceptance_per_position"])
            line += f"; mean accepted length {r['spec']['mean_accepted_length']:.2f} (per position: {acc})"
        print(line)
    if "sparrow" in results:
        a, b = results["no speculation"]["outputs"][0], results["sparrow"]["outputs"][0]
        print(f"\nidentical greedy output: {a['token_ids'] == b['token_ids']}; "
              f"decode speedup {b['decode_tok_s'] / a['decode_tok_s']:.2f}x "
              f"(CPU, {__import__('os').cpu_count()} cores; draft: {draft})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
