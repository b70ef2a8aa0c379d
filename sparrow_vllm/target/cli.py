"""``sparrow build-target``, ``sparrow train-target``, ``sparrow eval-target``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "build-target", help="assemble the embedded Qwen2.5-VL target (SmolLM2 + committed vision parts)",
        description="Assemble the full HF checkpoint of the embedded target from the SmolLM2 GGUF "
                    "and the committed vision parts. Deterministic; a complete directory is reused.",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the cache)")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    p.set_defaults(run=run_build)

    t = subparsers.add_parser("train-target", help="train the target's vision tower on SparrowWorld (once; ~40 min)")
    t.add_argument("--out", type=Path, default=Path("runs/target"))
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--accum", type=int, default=4)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", type=Path, default=None, help="continue from these vision parts")
    t.set_defaults(run=run_train)

    e = subparsers.add_parser("eval-target", help="accuracy of the target's greedy answers on SparrowWorld")
    e.add_argument("--split", default="test")
    e.add_argument("--n", type=int, default=100)
    e.add_argument("--frames", type=int, nargs="+", default=[16])
    e.add_argument("--target", type=Path, default=None)
    e.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    e.add_argument("--out", type=Path, default=Path("benchmarks/results/target_quality.json"))
    e.set_defaults(run=run_eval)


def run_build(args) -> int:
    from sparrow_vllm.target.build import build_target

    print(build_target(args.out, force=args.force))
    return 0


def run_train(args) -> int:
    from sparrow_vllm.target.train_vision import train_vision

    print(train_vision(args.out, steps=args.steps, lr=args.lr, accum=args.accum, seed=args.seed, init=args.init))
    return 0


def run_eval(args) -> int:
    import torch
    from transformers import AutoProcessor

    from sparrow_vllm.target.build import build_target, load_hf_target
    from sparrow_vllm.target.evaluate import evaluate, evaluate_vllm, write_report

    torch.set_flush_denormal(True)
    target = build_target() if args.target is None else args.target
    if args.engine == "transformers":
        model = load_hf_target(target)
        processor = AutoProcessor.from_pretrained(target)
    results = []
    for f in args.frames:
        if args.engine == "vllm":
            r = evaluate_vllm(target, args.split, args.n, f)
        else:
            r = evaluate(model, processor, args.split, args.n, f)
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
        results.append(r)
    write_report(results, args.out)
    return 0
