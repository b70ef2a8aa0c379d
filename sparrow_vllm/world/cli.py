"""`sparrow world`: write a SparrowWorld video QA dataset directory.

    sparrow world --out DIR --n N (--frames F | --visual-tokens K) [--split train|val|test]
                  [--height 112 --width 112] [--start-index 0]
"""

from __future__ import annotations

import argparse
import sys

from sparrow_vllm.world.dataset import (MIN_FRAMES, PATCH, SPLITS, frames_for_visual_tokens,
                                        visual_tokens, write_dataset)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `world` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "world", help="generate a SparrowWorld video QA dataset",
        description="Write DIR/samples.jsonl and DIR/videos/<id>.npy (uint8 [T, H, W, 3]). "
                    "Resumable: videos already complete on disk are skipped.")
    p.add_argument("--out", required=True, help="dataset directory")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--frames", type=int, help=f"frames per video (>= {MIN_FRAMES})")
    length.add_argument("--visual-tokens", type=int,
                        help="target visual tokens per video; picks the fewest frames reaching it")
    p.add_argument("--split", choices=list(SPLITS), default="train")
    p.add_argument("--height", type=int, default=112, help=f"multiple of {PATCH}")
    p.add_argument("--width", type=int, default=112, help=f"multiple of {PATCH}")
    p.add_argument("--start-index", type=int, default=0, help="index of the first sample")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.height % PATCH or args.width % PATCH or args.height <= 0 or args.width <= 0:
        print(f"error: --height and --width must be positive multiples of {PATCH}", file=sys.stderr)
        return 2
    if args.n < 0 or args.start_index < 0:
        print("error: --n and --start-index must be >= 0", file=sys.stderr)
        return 2
    if args.frames is not None:
        frames = args.frames
    else:
        # short budgets still get MIN_FRAMES so every event has its own frame
        frames = max(MIN_FRAMES, frames_for_visual_tokens(args.visual_tokens, args.height, args.width))
    if frames < MIN_FRAMES:
        print(f"error: --frames must be >= {MIN_FRAMES}", file=sys.stderr)
        return 2
    stats = write_dataset(args.out, args.split, args.n, frames, args.height, args.width,
                          start_index=args.start_index, progress=not args.no_progress)
    print(f"{args.out}: {args.n} {args.split} samples x {frames} frames "
          f"({visual_tokens(frames, args.height, args.width)} visual tokens each); "
          f"wrote {stats['written']}, {stats['skipped']} already present")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: python -m sparrow_vllm.world.cli --out DIR ..."""
    parser = argparse.ArgumentParser(prog="sparrow-world")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["world", *(sys.argv[1:] if argv is None else argv)])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
