"""Benchmark Sparrow's text-window draft attention against full-context draft attention.

For a decode batch (one query per sequence) of a video prompt laid out as
``[~64 text | V visual | ~64 text]``, time

* ``sparrow``: ``text_window_attention`` over the W most recent text tokens
  (torch path on CPU; the Triton kernel too when CUDA is available), and
* ``full``: ``full_attention_torch``, attending to every position 0..pos (what a
  full-context EAGLE draft does), on the *same* paged cache,

against the number of visual tokens V. Sparrow's cost should be flat in V; full
attention's grows linearly.

Usage::

    .venv/bin/python benchmarks/bench_kernels.py [--quick] [--window 128]

Writes ``benchmarks/results/bench_kernels.json`` (hardware + per-cell medians) and
``benchmarks/results/bench_kernels.png``, and prints full/sparrow at 25k visual tokens.
The Triton interpreter is not timed on CPU: its speed says nothing about the kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # kernels/ installs as `sparrow_kernels`

import torch  # noqa: E402

from common import hardware  # noqa: E402
from sparrow_kernels import full_attention_torch, text_window_attention  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
VISUAL_TOKENS = [1_000, 4_000, 16_000, 25_000, 64_000, 100_000]
QUICK_VISUAL_TOKENS = [1_000, 25_000, 100_000]
BATCHES = [1, 4]
RATIO_AT = 25_000

# Draft model shape (the embedded draft: 9 query heads over 3 kv heads, head_dim 64).
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16
TEXT_BEFORE, TEXT_AFTER = 64, 64


def build_batch(num_visual: int, batch: int, key_cache: torch.Tensor, value_cache: torch.Tensor,
                gen: torch.Generator, device: str):
    """Decode batch of ``batch`` sequences ``[TEXT_BEFORE text | num_visual | TEXT_AFTER text]``
    whose blocks are a random subset of the shared cache's blocks.

    Returns the kernel arguments after ``query``/caches: block_table ``[B, nblk]``,
    text_positions ``[B * n_text]``, text_start_loc ``[B + 1]``, query_start_loc
    ``[B + 1]``, query_text_idx ``[B]``.
    """
    seq_len = TEXT_BEFORE + num_visual + TEXT_AFTER
    nblk = math.ceil(seq_len / BLOCK_SIZE)
    num_blocks = key_cache.shape[0]
    block_table = torch.randperm(num_blocks, generator=gen)[: batch * nblk].view(batch, nblk).to(torch.int32)
    text = list(range(TEXT_BEFORE)) + list(range(TEXT_BEFORE + num_visual, seq_len))
    n_text = len(text)
    text_positions = torch.tensor(text * batch, dtype=torch.int32)
    text_start_loc = torch.arange(batch + 1, dtype=torch.int32) * n_text
    query_start_loc = torch.arange(batch + 1, dtype=torch.int32)
    query_text_idx = torch.full((batch,), n_text - 1, dtype=torch.int32)  # decode: the newest text token
    return tuple(t.to(device) for t in (block_table, text_positions, text_start_loc, query_start_loc,
                                        query_text_idx))


def time_fn(fn, *, min_repeats: int, budget_s: float, max_repeats: int, cuda: bool) -> list[float]:
    """Per-call wall times in ms: one warm-up, then at least ``min_repeats`` calls, more
    (up to ``max_repeats``) while the total stays under ``budget_s``."""
    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    once()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        times.append(once())
    return times


def plot(results: list[dict], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {1: "tab:blue", 4: "tab:orange"}
    styles = {"sparrow_torch": "-", "full_torch": "--", "sparrow_triton": "-.", "full_torch_cuda": ":"}
    labels = {"sparrow_torch": f"sparrow W={window} (torch)", "full_torch": "full attention (torch)",
              "sparrow_triton": f"sparrow W={window} (triton)", "full_torch_cuda": "full attention (torch, cuda)"}
    for method in styles:
        for batch in sorted({r["batch"] for r in results}):
            cells = sorted((r for r in results if r["method"] == method and r["batch"] == batch),
                           key=lambda r: r["num_visual"])
            if not cells:
                continue
            ax.plot([c["num_visual"] for c in cells], [c["median_ms"] for c in cells], styles[method],
                    marker="o", color=colors.get(batch), label=f"{labels[method]}, batch {batch}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # sparrow and full differ by orders of magnitude
    ax.set_xlabel("visual tokens in the sequence")
    ax.set_ylabel("draft attention time per decode step (ms, median)")
    ax.set_title(f"Draft attention: text window vs full context (Hq={NUM_Q_HEADS}, Hkv={NUM_KV_HEADS}, "
                 f"D={HEAD_DIM})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only V in {QUICK_VISUAL_TOKENS}, fewer repeats")
    ap.add_argument("--window", type=int, default=128, help="Sparrow text window W (default 128)")
    ap.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"],
                    help="query/KV cache dtype (default bfloat16, the draft's serving dtype)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both methods (default 1; 0 = torch's default). "
                         "A decode step's window attention is ~0.1 ms of work: with OpenMP threads on "
                         "a core shared with another job, barrier waits (tens of ms) would dominate.")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    visual_tokens = QUICK_VISUAL_TOKENS if args.quick else VISUAL_TOKENS
    min_repeats, budget_s = (3, 0.3) if args.quick else (7, 1.0)
    use_cuda = torch.cuda.is_available()
    devices = ["cpu"] + (["cuda"] if use_cuda else [])
    scale = HEAD_DIM ** -0.5
    gen = torch.Generator().manual_seed(0)

    # One cache big enough for the largest cell, shared by every cell (block tables pick
    # random blocks of it). Every slot is written: the full-context baseline reads them all.
    max_blocks = max(BATCHES) * math.ceil((TEXT_BEFORE + max(visual_tokens) + TEXT_AFTER) / BLOCK_SIZE)
    cache_shape = (max_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    t0 = time.perf_counter()
    caches = {"cpu": (torch.randn(cache_shape, generator=gen, dtype=dtype),
                      torch.randn(cache_shape, generator=gen, dtype=dtype))}
    if use_cuda:
        caches["cuda"] = tuple(c.cuda() for c in caches["cpu"])
    print(f"cache {tuple(cache_shape)} {args.dtype} ({2 * caches['cpu'][0].nbytes / 2**20:.0f} MiB K+V) "
          f"built in {time.perf_counter() - t0:.1f}s; torch threads: {torch.get_num_threads()}")

    results: list[dict] = []
    for device in devices:
        key_cache, value_cache = caches[device]
        methods = {
            "cpu": {"sparrow_torch": ("torch", text_window_attention), "full_torch": ("torch", full_attention_torch)},
            "cuda": {"sparrow_triton": ("triton", text_window_attention),
                     "full_torch_cuda": ("torch", full_attention_torch)},
        }[device]
        for batch in BATCHES:
            for num_visual in visual_tokens:
                meta = build_batch(num_visual, batch, key_cache, value_cache, gen, device)
                query = torch.randn(batch, NUM_Q_HEADS, HEAD_DIM, generator=gen, dtype=dtype).to(device)
                out = torch.empty_like(query)
                for method, (backend, fn) in methods.items():
                    extra = {"backend": backend} if fn is text_window_attention else {}
                    call = (lambda fn=fn, extra=extra:
                            fn(query, key_cache, value_cache, *meta, args.window, scale, out=out, **extra))
                    times = time_fn(call, min_repeats=min_repeats, budget_s=budget_s,
                                    max_repeats=200, cuda=device == "cuda")
                    assert torch.isfinite(out.float()).all(), f"{method} produced non-finite output"
                    cell = {"method": method, "device": device, "batch": batch, "num_visual": num_visual,
                            "seq_len": TEXT_BEFORE + num_visual + TEXT_AFTER,
                            "median_ms": statistics.median(times), "min_ms": min(times), "repeats": len(times)}
                    results.append(cell)
                    print(f"{device:4s} {method:16s} batch {batch}  V={num_visual:>7d}  "
                          f"median {cell['median_ms']:9.3f} ms  (min {cell['min_ms']:.3f}, n={len(times)})",
                          flush=True)

    def median_of(method, batch, v):
        return next(r["median_ms"] for r in results if r["method"] == method and r["batch"] == batch
                    and r["num_visual"] == v)

    ratios = {}
    print(f"\nfull / sparrow at {RATIO_AT} visual tokens (W={args.window}):")
    for full_m, sparrow_m in [("full_torch", "sparrow_torch")] + ([("full_torch_cuda", "sparrow_triton")]
                                                                    if use_cuda else []):
        for batch in BATCHES:
            f, s = median_of(full_m, batch, RATIO_AT), median_of(sparrow_m, batch, RATIO_AT)
            ratios[f"{full_m}/{sparrow_m}/batch{batch}"] = f / s
            print(f"  batch {batch}: {full_m} {f:.3f} ms / {sparrow_m} {s:.3f} ms = {f / s:.1f}x")

    try:
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        loadavg = None
    hw = hardware()
    report = {
        "hardware": {  # the names report.py reads
            "cpu_model": hw["cpu"],
            "cpu_count": hw["cores"],
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_end": loadavg,  # the machine may be shared; high load inflates times
            "torch_version": hw["torch"],
            "python_version": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name(0) if use_cuda else None,
        },
        "config": {
            "window_size": args.window, "num_q_heads": NUM_Q_HEADS, "num_kv_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM, "block_size": BLOCK_SIZE, "text_before": TEXT_BEFORE,
            "text_after": TEXT_AFTER, "dtype": args.dtype, "batches": BATCHES,
            "visual_tokens": visual_tokens, "queries_per_seq": 1, "quick": args.quick,
            "torch_threads": torch.get_num_threads(),
            "timing": f"median of >= {min_repeats} calls after 1 warm-up (more while under {budget_s}s)",
            "note": "Triton is only timed on CUDA; the CPU interpreter's speed is not meaningful.",
        },
        "results": results,
        f"ratio_full_over_sparrow_at_{RATIO_AT}": ratios,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "bench_kernels.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, json_path)
    png_path = args.out_dir / "bench_kernels.png"
    plot(results, png_path, args.window)
    print(f"\nwrote {json_path.relative_to(REPO_ROOT) if json_path.is_relative_to(REPO_ROOT) else json_path}"
          f" and {png_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
