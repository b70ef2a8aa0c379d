"""Adaptive k against fixed k and no speculation, side by side in one run (offline ``LLM``).

Per video length: one engine without speculation, one per fixed k = 1..k_max, then "auto":
the k table fitted (``sparrow tune``'s fit, ``serving/adaptive.py``) from the step times and the
acceptance the fixed-k engines of this run measured, written beside a copy of the draft, and
run with ``"num_speculative_tokens_per_batch_size": "auto"``. Every engine runs every batch
size: a batch of B is B requests submitted together, ``--requests`` of them per cell over
``--videos`` distinct SparrowWorld test videos (prefix-cached), greedy, answers to their end.
``best_fixed`` is, per point, the fixed k of the highest measured speedup. Every engine step is
timed inside the engine: ``speedup_vs_none`` is decode tokens/s over the engine's decode steps
(prefill steps out), ``end_to_end_vs_none`` the same over the waves' wall time (prefill in); a
cell records the k its decode steps asked for. ``fixed_block_drop`` (``--block-drop-k``) is
fixed k with ``"disable_eagle_block_drop": false``: vLLM's EAGLE default, which re-prefills each
request's last cached KV block, against Sparrow's default of reusing it.

``--task narrate`` runs the long-answer workload (``world.story``: a video's events in order,
asked in each phrasing) instead of short questions, on a target that gives long answers
(``--target`` with ``--draft``, e.g. the long-task target of docs/target.md O and its draft).

The sweep is resumable engine by engine (``--repeats`` reruns whole engines and keeps every
repeat): ``results/adaptive_k.json`` holds a flat list of cells, keyed by task and target too.

    python benchmarks/bench_adaptive_k.py --visual-tokens 1024 --batch 1 4 --requests 8 --k-max 3   # minutes
    python benchmarks/bench_adaptive_k.py                       # 1k and 25k, batch 1-64 (hours on 2 cores)
    python benchmarks/bench_adaptive_k.py --task narrate --target runs/target-long-all/target200 \
        --draft runs/long/sp-a3-w128 --visual-tokens 1024       # long answers
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import hardware, portable_path  # noqa: E402
from sparrow_vllm.serving.tune import cell_prompts, engine_spec, fit_cells, run_measured, summarize  # noqa: E402

OUT = ROOT / "results" / "adaptive_k.json"

EMBEDDED = "embedded"  # the ``target`` of cells on the embedded target and its default draft
POINT = ("task", "target", "visual_tokens", "batch")  # cells compared with each other


def point(c: dict, fields=POINT) -> tuple:
    return tuple(c.get(f, EMBEDDED if f == "target" else None) for f in fields)


def load(path: Path) -> dict:
    """The results so far; a file of one workload (``config``, ``k_table``) is read as the qa
    workload on the embedded target."""
    data = json.loads(path.read_text()) if path.exists() else {"cells": []}
    if "config" in data:
        data.setdefault("configs", {})[f"qa {EMBEDDED}"] = data.pop("config")
    if "k_table" in data:
        data.setdefault("k_tables", {})[f"qa {EMBEDDED}"] = data.pop("k_table")
    return data


def save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def have(data: dict, task: str, target: str, vt: int, method: str, k, repeat: int) -> bool:
    return any(point(c, ("task", "target", "visual_tokens")) == (task, target, vt) and c["method"] == method
               and c.get("k") == k and c["repeat"] == repeat for c in data["cells"])


def add_speedups(cells: list[dict]) -> None:
    """``speedup_vs_none``: decode tokens/s over no speculation's at the same point (the mean
    of its repeats); ``best_fixed`` rows: per point and repeat, the best fixed k."""
    cells[:] = [c for c in cells if c["method"] != "best_fixed"]
    for key, out in (("decode_tok_s", "speedup_vs_none"), ("end_to_end_tok_s", "end_to_end_vs_none")):
        base = {}
        for c in cells:
            if c["method"] == "none":
                base.setdefault(point(c), []).append(c[key])
        for c in cells:
            b = base.get(point(c))
            c[out] = c[key] / statistics.mean(b) if b and c.get(key) else None
    best = {}
    for c in cells:
        if c["method"] == "fixed" and c["speedup_vs_none"] is not None:
            key = (*point(c), c["repeat"])
            if key not in best or c["speedup_vs_none"] > best[key]["speedup_vs_none"]:
                best[key] = c
    cells += [dict(c, method="best_fixed") for c in best.values()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visual-tokens", type=int, nargs="+", default=[1024, 25000])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--k-max", type=int, default=5)
    ap.add_argument("--requests", type=int, default=16, help="requests per cell (at least the batch)")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="engines run this many times each")
    ap.add_argument("--block-drop-k", type=int, default=4,
                    help="also run fixed k with vLLM's EAGLE block drop (0: not)")
    ap.add_argument("--task", choices=("qa", "narrate"), default="qa",
                    help="qa: short questions; narrate: the long-answer workload")
    ap.add_argument("--target", default=None, help="target dir (default: the embedded Qwen2.5-VL target)")
    ap.add_argument("--draft", type=Path, default=None, help="its Sparrow draft (default: the target's default)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 64 (qa), 768 (narrate)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.target and not args.draft:
        ap.error("--target: name the Sparrow draft trained on it too (--draft)")
    max_tokens = args.max_tokens or (64 if args.task == "qa" else 768)

    from sparrow_vllm.families import DEFAULT_FAMILY, get_family
    from sparrow_vllm.serving.adaptive import K_TABLE_NAME
    from sparrow_vllm.serving.config import default_draft_for

    family = get_family(DEFAULT_FAMILY)
    target = str(args.target or family.build_target())
    draft = args.draft or default_draft_for(target)
    name = portable_path(target) if args.target else EMBEDDED
    data = load(args.out)
    data.update(hardware=hardware())
    data.setdefault("configs", {})[f"{args.task} {name}"] = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "draft")},
        "target": Path(target).name, "draft": portable_path(draft) if args.draft else draft.name}
    methods = [("none", None)] + [("fixed", k) for k in range(1, args.k_max + 1)]
    if args.block_drop_k:
        methods.append(("fixed_block_drop", args.block_drop_k))

    def run(vt: int, method: str, k, repeat: int, spec: dict) -> None:
        print(f"... {vt} visual tokens, {method} k={k} (repeat {repeat})", flush=True)
        out, steps = run_measured(spec)
        for r in summarize(out, steps, spec):
            data["cells"].append(dict(r, task=args.task, target=name, visual_tokens=vt, method=method, k=k,
                                      repeat=repeat, engine_start_s=out["engine_start_s"]))
        add_speedups(data["cells"])
        save(args.out, data)

    def prompts_for(vt):
        return lambda b: cell_prompts(family, vt, max(b, args.requests), args.videos, "test", args.task)

    for repeat in range(args.repeats):
        for vt in args.visual_tokens:
            for method, k in methods:
                if not have(data, args.task, name, vt, method, k, repeat):
                    extra = {"disable_eagle_block_drop": False} if method == "fixed_block_drop" else None
                    run(vt, method, k, repeat, engine_spec(target, k, str(draft), args.batch, prompts_for(vt),
                                                           max(4096, vt + 1024), speculative=extra,
                                                           max_tokens=max_tokens))
    # "auto": the table this run's fixed-k engines measure (all lengths: its context rows)
    rows = [dict(c, k=None if c["method"] == "none" else c["k"]) for c in data["cells"]
            if c["method"] in ("none", "fixed") and c["repeat"] == 0 and c["visual_tokens"] in args.visual_tokens
            and point(c, ("task", "target")) == (args.task, name)]
    table = fit_cells(rows, args.k_max, hardware())
    # the draft with this run's table (kept for bench_load.py --draft runs/adaptive_k_draft --auto)
    auto_draft = ROOT.parent / "runs" / ("adaptive_k_draft" if (args.task, name) == ("qa", EMBEDDED)
                                         else f"adaptive_k_draft-{args.task}-{Path(target).name}")
    shutil.rmtree(auto_draft, ignore_errors=True)
    auto_draft.mkdir(parents=True)
    for f in draft.iterdir():
        (auto_draft / f.name).symlink_to(f.resolve())
    (auto_draft / K_TABLE_NAME).write_text(json.dumps(table.to_json(), indent=1))
    data.setdefault("k_tables", {})[f"{args.task} {name}"] = table.to_json()
    save(args.out, data)
    for repeat in range(args.repeats):
        for vt in args.visual_tokens:
            if not have(data, args.task, name, vt, "auto", None, repeat):
                run(vt, "auto", None, repeat, engine_spec(target, None, str(auto_draft), args.batch,
                                                          prompts_for(vt), max(4096, vt + 1024), k_table=True,
                                                          max_tokens=max_tokens))
    print(json.dumps([{k: c.get(k) for k in ("visual_tokens", "batch", "method", "k", "repeat", "speedup_vs_none",
                                              "tau", "k_steps")} for c in data["cells"]], indent=None)[:4000])
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
