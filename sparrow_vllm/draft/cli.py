"""``sparrow data`` / ``sparrow train`` / ``sparrow eval-draft``: the draft's pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparrow_vllm.draft.config import WINDOW_SIZE


def _layers(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer ids like 2,15,27, got {s!r}") from e


def _at_least_one(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s!r}")
    return n


def _positive_float(s: str) -> float:
    try:
        x = float(s)
    except ValueError:
        x = 0.0
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}")
    return x


def _default_target() -> str:
    from sparrow_vllm.target.paths import default_target_dir

    return str(default_target_dir())


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    torch.set_flush_denormal(True)


def _add_ray_args(p, what: str) -> None:
    p.add_argument("--ray", action="store_true",
                   help=f"{what} on the Ray cluster (RAY_ADDRESS, else a local one); --out on shared storage")
    p.add_argument("--num-workers", type=int,
                   help="Ray workers (default: one per GPU of the cluster, else its CPUs / --threads)")


def _check_ray_args(args) -> None:
    if args.num_workers is not None and not args.ray:
        raise SystemExit("--num-workers needs --ray")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="extract self-distillation data (target states at text positions)")
    p.add_argument("--target", default=_default_target(), help="HF target dir of a supported family (default: the embedded Qwen2.5-VL target)")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--n", type=int, help="number of samples (SparrowWorld)")
    p.add_argument("--start", type=int, default=0, help="first sample index of the split")
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE|DIR",
                   help="your own videos instead of SparrowWorld: a LLaVA-Video JSON/JSONL, an OpenAI chat JSONL "
                        "(video_url parts), or a folder of videos with --prompts; answered and captured through "
                        "vLLM, frames sampled as vllm serve samples them (draft/from_source.py)")
    p.add_argument("--video-root", type=Path, default=None, help="--from: where relative video paths start "
                   "(default: the file's folder)")
    p.add_argument("--prompts", type=Path, default=None, help="--from DIR: one prompt a line")
    p.add_argument("--responses", choices=["target", "dataset"], default="target",
                   help="--from: train on the target's own greedy answers (default; EAGLE-3 / speculators) or on "
                        "the dataset's answers, teacher-forced")
    p.add_argument("--max-model-len", type=int, default=32768, help="--from: longer prompts are skipped")
    p.add_argument("--media-io-kwargs", type=json.loads, default=None,
                   help="--from: vLLM's --media-io-kwargs, as the server is run (e.g. '{\"video\": {\"fps\": 24}}')")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--frames", type=int)
    g.add_argument("--visual-tokens", type=int, help="~visual tokens per video (frames derived)")
    p.add_argument("--layers", type=_layers, default=[2, 8, 15, 22, 27],
                   help="target layers whose input hidden states are stored (default 2,8,15,22,27)")
    p.add_argument("--all-positions", action="store_true", help="also keep visual positions (EAGLE-3 baseline)")
    p.add_argument("--task", default="qa", choices=["qa", "narrate", "chat", "stream"],
                   help="qa: the short questions; narrate/chat/stream: the long tasks (world/story.py), sample i "
                        "one turn of its conversation after the reference answers before it (give a larger "
                        "--max-new-tokens, e.g. 768)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=16, help="samples per shard")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--repeat-answers", type=_at_least_one, default=1, metavar="R",
                   help="training data only: teacher-force the target's answer repeated R times (the loops "
                        "long videos drive it into), labels = its own predictions there (default 1: off; "
                        "experimental, see docs/draft-study.md section D)")
    p.add_argument("--simulate-visual-tokens", type=int, default=0, metavar="N",
                   help="length augmentation: the target attends as if each video were N visual tokens long "
                        "(every visual key weighted N / its tokens: the dilution of a longer video, at the clip's "
                        "cost; sparrow_vllm/draft/STUDY.md). Default 0: off")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared box)")
    _add_ray_args(p, "extract with a Ray Data actor pool (one target replica per worker)")
    p.set_defaults(run=run_data)

    p = subparsers.add_parser("train", help="train a Sparrow draft (or the EAGLE-3 baseline)")
    p.add_argument("--data", required=True, nargs="+",
                   help="dataset dir(s) of one target; several mix them (e.g. short and long videos)")
    p.add_argument("--val-data")
    p.add_argument("--out", required=True)
    p.add_argument("--target", help="target dir (default: the one recorded in the data manifest)")
    p.add_argument("--recipe", default="sparrow", choices=["sparrow", "eagle3"])
    p.add_argument("--anchor-layers", type=_layers, help="default: 15 (sparrow), 2,15,27 (eagle3)")
    p.add_argument("--window", type=int, default=WINDOW_SIZE)
    p.add_argument("--mtp-depth", type=int, default=3)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--intermediate-size", type=int, default=1536)
    p.add_argument("--draft-vocab", type=int, default=2048)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--step-decay", type=float, default=0.8, help="MTP step weight decay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--num-speculative-tokens", type=int, default=5, help="default k written to config.json")
    p.add_argument("--storage-mb", type=_positive_float, default=None, metavar="MB",
                   help="train on the samples whose anchor states (fp16, the rows this recipe reads) fit "
                        "in MB, the datasets' mix kept: compare recipes under one storage budget")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    _add_ray_args(p, "train data-parallel (DDP) with Ray Train")
    p.set_defaults(run=run_train)

    p = subparsers.add_parser("eval-draft", help="offline greedy speculative decoding: mean accepted length")
    p.add_argument("--target", help="target dir (default: the one recorded in the data manifest)")
    p.add_argument("--draft", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--limit", type=int, help="at most this many samples")
    p.add_argument("--window", type=int, help="override the draft's window_size at inference (study only)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(run=run_eval_draft)


def run_data(args) -> int:
    from sparrow_vllm.draft.data import DataSpec, dilution_of, generate_dataset
    from sparrow_vllm.families import family_of

    _check_ray_args(args)
    _threads(args.threads)
    if args.source is not None:
        if args.simulate_visual_tokens:
            raise SystemExit("sparrow data: --simulate-visual-tokens applies to SparrowWorld data (--n with "
                             "--frames or --visual-tokens), not to --from, which the serving engine answers")
        return _run_data_from(args)
    if args.n is None or not (args.frames or args.visual_tokens):
        raise SystemExit("sparrow data: give --n and --frames or --visual-tokens (SparrowWorld), or --from")
    frames = args.frames or family_of(args.target).frames_for_visual_tokens(args.visual_tokens)
    try:
        spec = DataSpec(split=args.split, n=args.n, num_frames=frames, layers=sorted(args.layers),
                        all_positions=args.all_positions, max_new_tokens=args.max_new_tokens,
                        shard_size=args.shard_size, start=args.start, dtype=args.dtype,
                        repeat_answers=args.repeat_answers, task=args.task,
                        simulate_visual_tokens=args.simulate_visual_tokens)
        dilution_of(family_of(args.target).visual_tokens(frames), args.simulate_visual_tokens)
    except ValueError as e:
        raise SystemExit(f"sparrow data: {e}") from None
    if args.ray:
        from sparrow_vllm.draft.ray_data import generate_dataset_ray

        m = generate_dataset_ray(args.target, args.out, spec, num_workers=args.num_workers, threads=args.threads)
    else:
        m = generate_dataset(args.target, args.out, spec)
    shards = m["shards"].values()
    n = sum(len(s["samples"]) for s in shards)
    total = sum(s["bytes"] for s in shards)
    print(json.dumps({"out": args.out, "samples": n, "bytes": total, "bytes_per_sample": total / max(n, 1),
                      "rows_per_sample": sum(s["rows"] for s in shards) / max(n, 1)}))
    return 0


def _run_data_from(args) -> int:
    from sparrow_vllm.draft.from_source import generate_source_dataset

    if args.task != "qa" or args.n is not None or args.frames or args.visual_tokens:
        raise SystemExit("sparrow data: --from takes its samples from the file; --n, --frames, --visual-tokens "
                         "and --task do not apply")
    try:
        m = generate_source_dataset(args.target, args.out, args.source, args.video_root, args.prompts,
                                    layers=args.layers, all_positions=args.all_positions,
                                    max_new_tokens=args.max_new_tokens, shard_size=args.shard_size,
                                    max_model_len=args.max_model_len, media_io_kwargs=args.media_io_kwargs,
                                    responses=args.responses, ray=args.ray, num_workers=args.num_workers,
                                    threads=args.threads)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # DataMismatchError is a ValueError
        raise SystemExit(f"sparrow data: {e}") from None
    shards = [s for s in m["shards"].values() if s.get("file")]
    total = sum(s["bytes"] for s in shards)
    n = sum(len(s["samples"]) for s in shards)
    print(f"records: {m['summary']['records']}; turns: {m['summary']['turns']}")
    print(json.dumps({"out": str(args.out), "samples": n, "bytes": total, "bytes_per_sample": total / max(n, 1)}))
    return 0


def run_train(args) -> int:
    from sparrow_vllm.draft.train import TrainArgs, train

    _check_ray_args(args)
    _threads(args.threads)
    a = TrainArgs(data=args.data[0] if len(args.data) == 1 else args.data, out=args.out, recipe=args.recipe, anchor_layers=args.anchor_layers,
                  window=args.window, mtp_depth=args.mtp_depth, num_layers=args.num_layers,
                  intermediate_size=args.intermediate_size, draft_vocab=args.draft_vocab, steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, step_decay=args.step_decay, seed=args.seed,
                  val_data=args.val_data, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                  resume=args.resume, target=args.target, num_speculative_tokens=args.num_speculative_tokens,
                  storage_mb=args.storage_mb)
    try:
        if args.ray:
            from sparrow_vllm.draft.ray_train import train_ray

            train_ray(a, num_workers=args.num_workers, threads=args.threads)
        else:
            train(a)
    except (ValueError, FileNotFoundError) as e:  # DataMismatchError is a ValueError
        raise SystemExit(f"sparrow train: {e}") from None
    return 0


def run_eval_draft(args) -> int:
    from sparrow_vllm.draft.data import data_target, load_manifest
    from sparrow_vllm.draft.evaluate import format_table, run_eval

    _threads(args.threads)
    try:
        target = args.target or data_target(load_manifest(args.data))
        rep = run_eval(target, args.draft, args.data, args.k, limit=args.limit, out=args.out,
                       window=args.window)
    except (ValueError, OSError) as e:  # DataMismatchError, DraftConfigError; a missing file or dir
        raise SystemExit(f"sparrow eval-draft: {e}") from None
    print(format_table(rep["results"], f"{args.draft} on {args.data} ({rep['samples']} samples, "
                                       f"~{rep['visual_tokens']} visual tokens)"))
    return 0


def main(argv=None) -> int:
    """``python -m sparrow_vllm.draft.cli COMMAND ...`` (same as ``sparrow COMMAND``)."""
    parser = argparse.ArgumentParser(prog="sparrow-draft")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
