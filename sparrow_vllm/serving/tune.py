"""``sparrow tune``: measure step costs on this machine, write the draft's k table.

One vLLM engine per method (no speculation, then Sparrow at a fixed k = 1..k_max), each run
over SparrowWorld prompts at the video lengths and batch sizes asked for: a batch of B is B
requests submitted together (several videos, each shared by its requests through prefix
caching). Every engine step is timed inside the engine (``SPARROW_PROFILE_STEPS``,
``vllm_compat._time_steps``); the median full-batch decode step gives ``t_step(k, B, L)``,
vLLM's counters the draft's per-position acceptance at k_max. ``serving/adaptive.py`` turns
them into one batch-size schedule per video length, written as ``<draft>/k_table.json``;
``"num_speculative_tokens_per_batch_size": "auto"`` runs it.

Why a command and not a warm-up at every start: the table needs step times at batch sizes
live traffic may not reach for hours, measured under control; it is a file a user can read
and diff; and it costs nothing at start-up. It is per machine: rerun it on new hardware
(the table records the hardware it came from).

    sparrow tune                                  # the embedded target and its default draft
    sparrow tune --target DIR --draft DIR --visual-tokens 1024 25000 --batch 1 4 16 64
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

QUESTIONS = ("Describe the video.", "How many objects appear in the video?", "Which object appears first?",
             "Which object disappears?", "What colour is the first object?", "What happens in the video?")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tune", help="measure step costs here and write the draft's k table (\"auto\" k)")
    p.add_argument("--target", default=None, help="target directory (default: the embedded target)")
    p.add_argument("--draft", type=Path, default=None, help="Sparrow draft directory (default: the target's)")
    p.add_argument("--visual-tokens", type=int, nargs="+", default=[1024, 25000],
                   help="video lengths to measure (one table row each, kept only if they differ)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64], help="batch sizes to measure")
    p.add_argument("--k-max", type=int, default=5, help="largest k to measure and allow")
    p.add_argument("--requests", type=int, default=8, help="requests per batch size (at least the batch)")
    p.add_argument("--videos", type=int, default=2, help="distinct videos per cell (prefix-cached)")
    p.add_argument("--out", type=Path, default=None, help="default: <draft>/k_table.json")
    p.set_defaults(run=run)


def cell_prompts(family, visual_tokens: int, requests: int, videos: int, split: str, task: str = "qa") -> list[dict]:
    """``requests`` prompt specs over ``videos`` videos, questions cycled (a request index
    appended once they repeat, so no two prompts are the same). ``task`` "qa": short questions
    about SparrowWorld clips; "narrate": the long-answer task (``world.story``), a video's
    narration asked in each of its phrasings."""
    from sparrow_vllm.world.story import NARRATE_QUESTIONS

    frames = family.frames_for_visual_tokens(visual_tokens)
    questions = QUESTIONS if task == "qa" else NARRATE_QUESTIONS
    out = []
    for i in range(requests):
        q = questions[(i // videos) % len(questions)]
        if i >= videos * len(questions):
            q += f" (request {i})"
        spec = {"split": split, "index": i % videos, "frames": frames, "question": q}
        out.append(spec if task == "qa" else {"task": task, "turn": 0, **spec})
    return out


def engine_spec(target: str, k: int | None, draft: str | None, batches, prompts_for, max_model_len: int,
                k_table: bool = False, speculative: dict | None = None, max_tokens: int = 64) -> dict:
    """One engine: a warm-up that prefills every video, then per batch size B its prompts in
    waves of B, each answered to its end or ``max_tokens``. ``k``: None (no speculation) or a
    fixed k (``k_table``: "auto" instead); ``speculative``: more keys of the Sparrow config."""
    cells = []
    for b in batches:
        prompts = prompts_for(b)
        cells += [{"batch": b, "prompts": prompts[i:i + b]} for i in range(0, len(prompts), b)]
    videos = {(p["index"], p["frames"]): p for c in cells for p in c["prompts"]}
    cells[0]["warmup"] = [dict(p, question="What is in the video?") for p in videos.values()]
    # KV for every video at once plus the answers (~50 KB a token for the embedded targets in
    # fp32), so the prefix cache keeps each video while its requests run
    tokens = len(videos) * max_model_len + max(batches) * max(128, max_tokens)
    spec = {"target": target, "cells": cells, "sampling": {"max_tokens": max_tokens},
            "kv_cache_gib": max(4, -(-tokens * 60_000 // 2**30)),
            "engine": {"max_num_seqs": max(batches), "max_model_len": max_model_len}}
    if k is not None or k_table:
        sc = {"method": "sparrow", "num_speculative_tokens": k}
        if draft:
            sc["model"] = draft
        if k_table:
            sc = {key: v for key, v in sc.items() if key != "num_speculative_tokens"}
            sc["num_speculative_tokens_per_batch_size"] = "auto"
        spec["speculative_config"] = {**sc, **(speculative or {})}
    return spec


def run_measured(spec: dict, log: Path | None = None) -> tuple[dict, list[dict]]:
    """The engine's results and its step records, each tagged with the cell it ran in."""
    from sparrow_vllm.harness.offline import run_engine_subprocess

    fd, path = tempfile.mkstemp(prefix="sparrow-steps-", suffix=".jsonl")
    os.close(fd)
    os.environ["SPARROW_PROFILE_STEPS"] = path
    try:
        out = run_engine_subprocess(spec, timeout=4 * 3600, log=log)
        steps, cell = [], -1
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            if "cell" in rec:
                cell = rec["cell"]
            else:
                steps.append(dict(rec, cell=cell))
    finally:
        del os.environ["SPARROW_PROFILE_STEPS"]
        os.unlink(path)
    return out, steps


def step_time_at(steps: list[dict], batch: int) -> tuple[float | None, int]:
    """Seconds of a decode step of ``batch`` requests, and how many steps the estimate rests
    on: a least-squares line through the median step time at each batch size seen between
    ``batch / 2`` and ``2 * batch`` (a batch of short answers is rarely full for long: requests
    finish and prefills of the next interleave), evaluated at ``batch``."""
    by = {}
    for s in steps:
        if not s["prefill"]:
            by.setdefault(s["reqs"], []).append(s["s"])
    near = {r: v for r, v in by.items() if batch / 2 <= r <= 2 * batch}
    if not near:
        return None, 0
    n = sum(len(v) for v in near.values())
    pts = [(r, statistics.median(v), len(v)) for r, v in near.items()]
    if len(pts) == 1:
        return pts[0][1], n
    w = sum(c for _, _, c in pts)
    mx = sum(r * c for r, _, c in pts) / w
    my = sum(t * c for _, t, c in pts) / w
    slope = sum(c * (r - mx) * (t - my) for r, t, c in pts) / sum(c * (r - mx) ** 2 for r, _, c in pts)
    return max(1e-6, my + slope * (batch - mx)), n


def summarize(out: dict, steps: list[dict], spec: dict) -> list[dict]:
    """Per batch size: requests, output tokens, decode tokens/s (tokens after each request's
    first over the engine's decode steps), end-to-end tokens/s (over the waves' wall time), the
    decode step time at the batch size (``step_s``, :func:`step_time_at` over all the engine's
    decode steps), the mean context of its full-batch steps, tau and the per-position
    acceptance (vLLM's counters)."""
    rows, k_steps = {}, {}
    for i, (cell, res) in enumerate(zip(spec["cells"], out["cells"])):
        r = rows.setdefault(cell["batch"], {"batch": cell["batch"], "requests": 0, "output_tokens": 0,
                                            "decode_s": 0.0, "generate_s": 0.0, "_tokens": 0, "_steps": [],
                                            "_drafts": 0, "_acc": 0, "_per_pos": []})
        outs = res["outputs"]
        r["requests"] += len(outs)
        r["output_tokens"] += sum(len(o["token_ids"]) for o in outs)
        # decode time: the engine's own decode steps (a prefill of the wave's later requests
        # is not decode); generate_s: the whole wave as the caller saw it
        r["decode_s"] += sum(s["s"] for s in steps if s["cell"] == i and not s["prefill"])
        r["generate_s"] += res["generate_s"]
        r["_tokens"] += sum(len(o["token_ids"]) - 1 for o in outs)
        r["_steps"] += [s for s in steps if s["cell"] == i and not s["prefill"] and s["reqs"] == cell["batch"]]
        hist = k_steps.setdefault(cell["batch"], {})  # decode steps by the k they asked for
        for s in steps:
            if s["cell"] == i and not s["prefill"] and s["k"] is not None:
                hist[str(s["k"])] = hist.get(str(s["k"]), 0) + 1
        sp = res["spec"]
        r["_drafts"] += sp["num_drafts"]
        r["_acc"] += sp["num_accepted_tokens"]
        per = [a * sp["num_drafts"] for a in sp["acceptance_per_position"]]
        r["_per_pos"] = [x + y for x, y in zip(r["_per_pos"] + [0] * len(per), per)] if per else r["_per_pos"]
    result = []
    for r in rows.values():
        st = r.pop("_steps")
        drafts, acc, per, tokens = r.pop("_drafts"), r.pop("_acc"), r.pop("_per_pos"), r.pop("_tokens")
        step_s, used = step_time_at([s for s in steps if s["cell"] >= 0], r["batch"])
        r.update(decode_tok_s=tokens / r["decode_s"] if r["decode_s"] > 0 else None,
                 end_to_end_tok_s=r["output_tokens"] / r["generate_s"],
                 step_s=step_s, step_samples=used, full_batch_steps=len(st),
                 context=statistics.mean(s["context"] for s in (st or [s for s in steps if s["cell"] >= 0 and not s["prefill"]])),
                 tau=(1 + acc / drafts) if drafts else None,
                 acceptance_per_position=[x / drafts for x in per] if drafts else [],
                 k_steps=k_steps[r["batch"]])
        result.append(r)
    return result


def fit_cells(measured: list[dict], k_max: int, hardware: dict):
    """Rows of ``summarize`` tagged with ``visual_tokens`` and ``k`` (None: no speculation) ->
    the :class:`~sparrow_vllm.serving.adaptive.KTable`. Acceptance: the k_max rows, pooled."""
    from sparrow_vllm.serving.adaptive import KTableError, fit_table

    top = [r for r in measured if r["k"] == k_max and r["acceptance_per_position"]]
    if not top:
        raise KTableError(f"no drafts were verified at k = {k_max}: nothing to fit acceptance from")
    weights = [r["requests"] for r in top]
    acceptance = [sum(w * r["acceptance_per_position"][i] for w, r in zip(weights, top)) / sum(weights)
                  for i in range(k_max)]
    missing = [r for r in measured if r["step_s"] is None]
    if missing:
        raise KTableError("no full-batch decode step was measured at "
                          + ", ".join(f"{r['visual_tokens']} visual tokens batch {r['batch']} k {r['k']}" for r in missing)
                          + ": raise --requests")
    cells = [{"visual_tokens": r["visual_tokens"], "context": r["context"], "batch": r["batch"], "k": r["k"],
              "step_s": r["step_s"]} for r in measured]
    table = fit_table(cells, acceptance, k_max, hardware)
    table.measured.append({"acceptance_per_position": acceptance})
    return table


def run(args) -> int:
    from tqdm import tqdm

    from sparrow_vllm.families import family_of
    from sparrow_vllm.harness.hardware import hardware
    from sparrow_vllm.serving.adaptive import K_TABLE_NAME, KTableError
    from sparrow_vllm.serving.config import SparrowConfigError, default_draft_for

    if args.target is None:
        from sparrow_vllm.families import DEFAULT_FAMILY, get_family

        args.target = str(get_family(DEFAULT_FAMILY).build_target())
    try:
        draft = args.draft or default_draft_for(args.target)
    except SparrowConfigError as e:
        raise SystemExit(f"sparrow tune: {e}")
    if not (Path(draft) / "config.json").exists():
        raise SystemExit(f"sparrow tune: {draft} is not a draft directory (no config.json)")
    if not 1 <= args.k_max <= 16 or min(args.batch) < 1 or min(args.visual_tokens) < 1:
        raise SystemExit("sparrow tune: --k-max must be in 1..16, --batch and --visual-tokens >= 1")
    family = family_of(args.target)
    out_path = args.out or Path(draft) / K_TABLE_NAME
    methods = [None] + list(range(1, args.k_max + 1))
    measured = []
    with tqdm(total=len(args.visual_tokens) * len(methods), desc="sparrow tune (engines)") as bar:
        for vt in args.visual_tokens:
            prompts_for = lambda b: cell_prompts(family, vt, max(b, args.requests), args.videos, "val")  # noqa: E731
            max_len = max(4096, vt + 1024)
            for k in methods:
                spec = engine_spec(args.target, k, str(draft), args.batch, prompts_for, max_len)
                out, steps = run_measured(spec)
                measured += [dict(r, visual_tokens=vt, k=k) for r in summarize(out, steps, spec)]
                bar.update()
    try:
        table = fit_cells(measured, args.k_max, hardware())
    except KTableError as e:
        raise SystemExit(f"sparrow tune: {e}")
    out_path.write_text(json.dumps(table.to_json(), indent=1))
    for c, s in zip(table.contexts, table.schedules):
        print(f"context ~{c} tokens: num_speculative_tokens_per_batch_size {s}")
    print(f"wrote {out_path}; serve with --speculative-config "
          f"'{{\"method\": \"sparrow\", \"model\": \"{draft}\", \"num_speculative_tokens_per_batch_size\": \"auto\"}}'")
    return 0
