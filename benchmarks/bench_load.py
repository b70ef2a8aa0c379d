"""Load and client aborts against ``vllm serve`` with Sparrow, checked against no speculation.

Many concurrent streamed chat requests over SparrowWorld videos of mixed lengths, a share of
them closed by the client after one or two chunks; then, with the Sparrow server stopped, a
server without speculation answers every distinct prompt one at a time (greedy). Reports
requests served / aborted / errors / mismatches (every completed Sparrow answer must equal the
reference exactly), the time it took, and vLLM's acceptance figures. Loopback only; each
server is stopped by its PID before the next starts. ``tests/test_reliability.py`` is the short
version of this run.

    python benchmarks/bench_load.py            # 256 requests, 64 in flight (~4 min on 2 cores)
    python benchmarks/bench_load.py --requests 64 --videos 8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import hardware, portable_path  # noqa: E402
from sparrow_vllm.harness.server import (Server, chat_body, finished_in_engine, load_figures, metric_value,  # noqa: E402
                                      run_streams, spec_decode_stats, stream_chat, write_mp4)

QUESTIONS = ["Describe the video.", "How many objects appear in the video?"]
FPS = 2  # vLLM samples served videos at 2 fps: every frame is used, 8 visual tokens each


def make_prompts(media: Path, model: str, args) -> list[dict]:
    """``args.videos`` clips from ``min_frames`` to ``max_frames`` frames, 3 questions each."""
    from sparrow_vllm.world import make_sample

    prompts = []
    for i in range(args.videos):
        frames = args.min_frames + (args.max_frames - args.min_frames) * i // max(1, args.videos - 1)
        sample = make_sample("test", 100 + i, frames - frames % 2)
        url = f"file://{write_mp4(sample.frames(), media / f'clip{i}.mp4', fps=FPS)}"
        prompts += [chat_body(model, q, url, max_tokens=args.max_tokens) for q in [sample.question, *QUESTIONS]]
    return prompts


def server_args(media: Path, args, speculative: dict | None) -> list[str]:
    out = ["--dtype", "float32", "--enforce-eager", "--max-model-len", str(args.max_model_len),
           "--max-num-seqs", str(args.max_num_seqs), "--allowed-local-media-path", str(media)]
    return out + (["--speculative-config", json.dumps(speculative)] if speculative else [])


def k_histogram(metrics_text: str) -> dict[str, float]:
    """``sparrow:num_draft_tokens_per_step`` (serving/metrics.py) from ``/metrics``: steps per k."""
    from sparrow_vllm.serving.metrics import METRIC

    cum = {}
    for line in metrics_text.splitlines():
        if line.startswith(METRIC + "_bucket") and 'le="' in line:
            le = line.split('le="')[1].split('"')[0]
            cum[le] = cum.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    out, prev = {}, 0.0
    for le in sorted(cum, key=lambda x: float("inf") if x == "+Inf" else float(x)):
        if le != "+Inf":
            out[f"k={float(le) - 0.5:.0f}"] = cum[le] - prev
            prev = cum[le]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="target checkpoint (default: the embedded target, built if needed)")
    ap.add_argument("--draft", help="Sparrow draft (default: the target's default draft)")
    ap.add_argument("--k", type=int, default=3, help="num_speculative_tokens")
    ap.add_argument("--auto", action="store_true",
                    help="adaptive k (\"num_speculative_tokens_per_batch_size\": \"auto\"; the draft needs a k_table.json)")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight at once")
    ap.add_argument("--abort-every", type=int, default=3, help="every n-th request is aborted by the client")
    ap.add_argument("--videos", type=int, default=16, help="distinct videos (3 questions each)")
    ap.add_argument("--min-frames", type=int, default=16)
    ap.add_argument("--max-frames", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--deadline", type=float, default=900, help="seconds for the whole load")
    ap.add_argument("--out", default=str(ROOT / "results" / "reliability.json"))
    args = ap.parse_args()

    from sparrow_vllm.serving.config import default_draft_for
    from sparrow_vllm.target.build import build_target

    target = args.target or str(build_target())
    draft = args.draft or str(default_draft_for(target))
    media = Path(tempfile.mkdtemp(prefix="bench_load_"))
    n = args.requests
    abort_after = [1 + (i // args.abort_every) % 2 if i % args.abort_every == 0 else None for i in range(n)]

    spec = {"method": "sparrow", "model": draft, "num_speculative_tokens": args.k}
    if args.auto:
        spec = {"method": "sparrow", "model": draft, "num_speculative_tokens_per_batch_size": "auto"}
    t0 = time.time()
    with Server(target, server_args(media, args, spec), log=media / "sparrow.log", startup_timeout=600) as s:
        model = json.loads(s.get("/v1/models"))["data"][0]["id"]
        prompts = make_prompts(media, model, args)
        keys = [i % len(prompts) for i in range(n)]
        before = s.get("/metrics")
        t_load = time.time()
        results = run_streams(s.url + "/v1/chat/completions", [prompts[k] for k in keys], abort_after,
                              timeout=300, deadline=args.deadline, concurrency=args.concurrency)
        load_s = time.time() - t_load
        alive = s.proc.poll() is None
        time.sleep(2)
        after = s.get("/metrics") if alive else ""
    spec = spec_decode_stats(before, after)
    left_in_engine = metric_value(after, "vllm:num_requests_running") + metric_value(after, "vllm:num_requests_waiting")

    t_ref = time.time()
    with Server(target, server_args(media, args, None), log=media / "reference.log", startup_timeout=600) as ref:
        url = ref.url + "/v1/chat/completions"
        references = {}
        for k in sorted(set(keys)):
            r = stream_chat(url, prompts[k], timeout=300)
            references[k] = r["text"] if not r["error"] else f"<reference error: {r['error']}>"
    ref_s = time.time() - t_ref

    figures = load_figures(results, keys, references)
    figures.update({
        "server_alive_after_load": alive,
        "requests_left_in_engine": left_in_engine,
        "cut_short_in_engine": n - (finished_in_engine(after) - finished_in_engine(before)),
        "intended_aborts": sum(a is not None for a in abort_after),
        "load_s": round(load_s, 1),
        "reference_s": round(ref_s, 1),
        "total_s": round(time.time() - t0, 1),
        "mean_accepted_length": spec.pop("mean_accepted_length"),
        "spec_decode": spec,
        "k_per_step_histogram": k_histogram(after),
    })
    out = {
        "what": "concurrent streamed video chats against vllm serve with sparrow, client aborts, "
                "each completed answer compared with greedy no-speculation",
        "config": {**vars(args), "target": portable_path(target), "draft": portable_path(draft), "distinct_prompts": len(prompts),
                   "video_fps": FPS, "visual_tokens_range": [8 * args.min_frames, 8 * args.max_frames]},
        "hardware": hardware() | {"platform": platform.platform(), "python": platform.python_version()},
        "figures": figures,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    print("wrote", args.out)
    ok = alive and figures["errors"] == 0 and figures["mismatches"] == 0 and left_in_engine == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
