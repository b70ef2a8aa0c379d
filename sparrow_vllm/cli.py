"""The ``sparrow`` console script: one subcommand per module, wired here."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module providing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "world": "sparrow_vllm.world.cli",
    "build-target": "sparrow_vllm.target.cli",  # also train-target, eval-target
    "demo": "sparrow_vllm.harness.demo",
    "data": "sparrow_vllm.draft.cli",  # also train, eval-draft
    "tune": "sparrow_vllm.serving.tune",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparrow", description="Sparrow speculative decoding for Video LLMs (vLLM plugin)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
