"""``sparrow build-target``, ``sparrow train-target``, ``sparrow eval-target``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    from sparrow_vllm.target.config import PERCEPTION_LEVELS
    from sparrow_vllm.world.story import LONG_TASKS

    p = subparsers.add_parser(
        "build-target", help="assemble an embedded target (SmolLM2 + committed vision parts)",
        description="Assemble the full HF checkpoint of the embedded target of a model family from "
                    "the SmolLM2 GGUF and the committed vision parts. Deterministic; a complete "
                    "directory is reused.",
    )
    _add_arch(p)
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the cache)")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    p.add_argument("--vision-parts", type=Path, default=None,
                   help="trained parts to assemble instead of the committed ones (a `sparrow train-target` "
                        "output; give --out too, so the default target is not replaced)")
    p.set_defaults(run=run_build)

    k = subparsers.add_parser(
        "pack-parts", help="store trained vision parts in float16 (how the committed parts are kept)",
        description="Write a `sparrow train-target` output (vision tower, new token rows, LoRA factors) "
                    "in float16: half the bytes, for committing. `sparrow build-target` reads either "
                    "and assembles in fp32.")
    k.add_argument("src", type=Path, help="vision parts written by `sparrow train-target` (fp32)")
    k.add_argument("dst", type=Path, help="where to write the float16 copy")
    k.set_defaults(run=run_pack)

    t = subparsers.add_parser("train-target", help="train the target's vision tower on SparrowWorld (once; ~40 min)")
    _add_arch(t)
    t.add_argument("--out", type=Path, default=None, help="default runs/target (qwen2.5-vl), runs/target-<arch>")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--accum", type=int, default=4)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", type=Path, default=None, help="continue from these vision parts")
    t.add_argument("--simulate-tokens", type=int, default=32768,
                   help="train short clips as if up to this many visual tokens long (0: off; see train_vision)")
    t.add_argument("--simulate-positions", action="store_true",
                   help="the simulated length moves the positions too (plain 1-D positions: llava-onevision)")
    t.add_argument("--lora-rank", type=int, default=0,
                   help="also adapt the LM with a LoRA of this rank, merged at build time (0: LM frozen); "
                   "with an --init that has LoRA factors, at least their rank (a higher one grows them)")
    t.add_argument("--lora-lr", type=float, default=5e-4, help="learning rate of the LoRA factors")
    t.add_argument("--perception-weight", type=float, default=0.0,
                   help="add this times an identity/colour loss on the visual tokens (target/perception.py; 0: off)")
    t.add_argument("--perception-steps", type=int, default=0,
                   help="first fit that loss's heads for this many steps of 16 clips, without the LM (tower frozen "
                        "unless --perception-tower-lr)")
    t.add_argument("--perception-level", choices=PERCEPTION_LEVELS, default="token",
                   help="label each merged token, or each object's pooled tokens (identity, colour; with "
                        "object-motion also which way it moves within the patch; target/perception.py)")
    t.add_argument("--perception-tower-lr", type=float, default=0.0,
                   help="train the tower too during the --perception-steps, at this learning rate (0: heads only)")
    t.add_argument("--perception-hold", type=float, default=0.0,
                   help="with --perception-tower-lr: keep the tower's tokens near what they were before that stage, "
                        "this times their relative squared distance (0: off)")
    t.add_argument("--snapshot-every", type=int, default=0,
                   help="also write OUT/vision_parts-step<N>.safetensors every this many steps, for "
                        "build-target --vision-parts while the run goes on (0: only the final parts)")
    t.add_argument("--grounding-weight", type=float, default=0.0,
                   help="add this times an attention loss: one LM head looks, from the answer, at the visual "
                        "tokens of the object the question is about (target/grounding.py; 0: off)")
    t.add_argument("--grounding-layer", type=int, default=19, help="the LM layer whose head that loss trains")
    t.add_argument("--grounding-head", type=int, default=1,
                   help="that head (default L19 H1: on docs/target.md E's candidate, a head already drawn "
                        "to the object)")
    t.add_argument("--questions-per-clip", type=int, default=1,
                   help="train on up to this many questions about each clip in one forward: its own and one of "
                        "each other kind its scene answers, each seeing only the video (target/packing.py)")
    t.add_argument("--log-every", type=int, default=25, help="log (and checkpoint) every this many steps")
    t.add_argument("--stop-at", type=int, default=0,
                   help="stop after this step of the --steps schedule (checkpointed: the same command without "
                        "it resumes; 0: all steps)")
    t.add_argument("--long-share", type=float, default=0.0,
                   help="this share of the clips are turns of the long tasks instead (narrate, chat, stream over "
                        "64-128-frame stories, earlier turns teacher-forced; world/story.py)")
    t.add_argument("--long-all-turns", action="store_true",
                   help="a long-task clip is its whole conversation with every answer in the loss (one forward "
                        "trains all 3-6 turns of a chat or stream), not one random turn")
    t.add_argument("--long-task-weights", type=_task_weights, default=None, metavar="TASK=W[,TASK=W]",
                   help="draw a long clip's task with these weights (narrate=2: twice as many narrations; a task "
                        "left out: 1; default: uniform)")
    t.set_defaults(run=run_train)

    e = subparsers.add_parser("eval-target", help="accuracy of the target's greedy answers on SparrowWorld")
    _add_arch(e)
    e.add_argument("--split", default="test")
    e.add_argument("--n", type=int, default=100)
    e.add_argument("--frames", type=int, nargs="+", default=[16])
    e.add_argument("--task", choices=("qa", *LONG_TASKS), default="qa",
                   help="qa: the short questions; narrate/chat/stream: every turn of the long tasks (through "
                        "vLLM; event recall/precision and per-turn exact)")
    e.add_argument("--target", type=Path, default=None, help="a target dir (default: the embedded one of --arch)")
    e.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    e.add_argument("--out", type=Path, default=None, help="default benchmarks/results/target_quality.json "
                   "(qa), benchmarks/results/target_quality_long.json (the long tasks)")
    e.add_argument("--from-data", type=Path, nargs="+", default=None, metavar="DIR",
                   help="score the answers stored in `sparrow data` sets instead of running the target "
                        "(their own samples and lengths; --n/--frames/--engine do not apply)")
    e.set_defaults(run=run_eval)


def _task_weights(text: str) -> dict[str, float]:
    """``narrate=2,chat=1`` -> ``{"narrate": 2.0, "chat": 1.0}`` (argparse type of --long-task-weights)."""
    import argparse

    from sparrow_vllm.world.story import LONG_TASKS

    weights = {}
    for part in text.split(","):
        task, _, w = (x.strip() for x in part.partition("="))
        if task not in LONG_TASKS:
            raise argparse.ArgumentTypeError(f"unknown task {task!r}; expected one of {', '.join(LONG_TASKS)}")
        try:
            weights[task] = float(w)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not TASK=WEIGHT") from None
        if weights[task] < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight is >= 0")
    return weights


def _add_arch(p) -> None:
    from sparrow_vllm.families import DEFAULT_FAMILY, FAMILY_NAMES

    p.add_argument("--arch", choices=FAMILY_NAMES, default=DEFAULT_FAMILY,
                   help=f"model family of the embedded target (default {DEFAULT_FAMILY})")


def run_build(args) -> int:
    from sparrow_vllm.families import get_family

    if args.vision_parts is not None:
        if args.out is None:
            raise SystemExit("sparrow build-target: --vision-parts needs --out (the default directory holds the "
                             "committed target)")
        if not args.vision_parts.is_file():
            raise SystemExit(f"sparrow build-target: --vision-parts {args.vision_parts}: no such file")
    print(get_family(args.arch).build_target(args.out, force=args.force, vision_parts=args.vision_parts))
    return 0


def run_pack(args) -> int:
    import torch
    from safetensors.torch import load_file, save_file

    if not args.src.is_file():
        raise SystemExit(f"sparrow pack-parts: {args.src}: no such file")
    parts = load_file(str(args.src))
    if not parts or any(not v.is_floating_point() for v in parts.values()):
        raise SystemExit(f"sparrow pack-parts: {args.src} does not hold trained parts (float tensors)")
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: v.to(torch.float16).contiguous() for n, v in sorted(parts.items())}, str(args.dst))
    print(f"{args.dst}: {len(parts)} tensors, {args.dst.stat().st_size / 1e6:.1f} MB")
    return 0


def run_train(args) -> int:
    from sparrow_vllm.target.train_vision import OptionError, train_vision

    out = args.out or Path("runs/target" if args.arch == "qwen2.5-vl" else f"runs/target-{args.arch}")
    try:
        parts = train_vision(
            out, steps=args.steps, lr=args.lr, accum=args.accum, seed=args.seed, init=args.init,
            log_every=args.log_every, family=args.arch, simulate_tokens=args.simulate_tokens,
            lora_rank=args.lora_rank, lora_lr=args.lora_lr, perception_weight=args.perception_weight,
            perception_steps=args.perception_steps, perception_level=args.perception_level,
            perception_tower_lr=args.perception_tower_lr, perception_hold=args.perception_hold,
            snapshot_every=args.snapshot_every, grounding_weight=args.grounding_weight,
            grounding_layer=args.grounding_layer, grounding_head=args.grounding_head,
            questions_per_clip=args.questions_per_clip, long_share=args.long_share,
            long_all_turns=args.long_all_turns, long_task_weights=args.long_task_weights,
            simulate_positions=args.simulate_positions, stop_at=args.stop_at)
    except OptionError as e:
        raise SystemExit(f"sparrow train-target: {e}") from None
    print(parts)
    return 0


def run_eval(args) -> int:
    import torch

    from sparrow_vllm.families import family_of, get_family
    from sparrow_vllm.target.evaluate import evaluate, evaluate_data, evaluate_vllm, write_report

    args.out = args.out or Path("benchmarks/results/" + ("target_quality.json" if args.task == "qa"
                                                          else "target_quality_long.json"))
    if args.from_data is not None:
        try:
            results = [evaluate_data(d, args.target) for d in args.from_data]
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"sparrow eval-target: {e}") from None
        for r in results:
            print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
        write_report(results, args.out)
        return 0
    torch.set_flush_denormal(True)
    target = get_family(args.arch).build_target() if args.target is None else args.target
    if args.task != "qa":
        from sparrow_vllm.target.evaluate import evaluate_long

        if args.engine != "vllm":
            raise SystemExit("sparrow eval-target: the long tasks are scored through vLLM (--engine vllm)")
        results = []
        for f in args.frames:
            try:
                r = evaluate_long(target, args.task, args.split, args.n, f)
            except ValueError as e:  # a stream needs >= 128 frames, ...
                raise SystemExit(f"sparrow eval-target: {e}") from None
            print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
            results.append(r)
        write_report(results, args.out)
        return 0
    if args.engine == "transformers":
        family = family_of(target)
        model, processor = family.load_hf(target), family.load_processor(target)
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
