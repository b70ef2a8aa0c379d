"""Tests for the Sparrow text-window draft attention kernels (``kernels/``).

The Triton kernel, the vectorised torch path and the full-context baseline are all
checked against plain-loop oracles on paged caches with shuffled blocks, ragged
sequences, long visual spans, GQA and fp32/fp16/bf16.
"""

from __future__ import annotations

import os

# conftest.py sets it before any test module imports triton; this keeps the module runnable
# on its own (python -m pytest tests/test_kernels.py from another rootdir).
os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# `kernels/` (a top-level folder of the repo) is installed as `sparrow_kernels`.

import sparrow_kernels as kernels  # noqa: E402
from sparrow_kernels import (  # noqa: E402
    full_attention_torch,
    text_window_attention,
    text_window_attention_naive,
    text_window_attention_torch,
    text_window_attention_triton,
)

_TRITON_RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not _TRITON_RUNNABLE, reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    # f32 -> bf16 stores truncate in the interpreter (the oracle rounds): 1 bf16 ulp.
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}

IMPLS = {
    "torch": text_window_attention_torch,
    "triton": text_window_attention_triton,
}


# --------------------------------------------------------------------------------------
# Problem builder
# --------------------------------------------------------------------------------------
@dataclass
class Problem:
    query: torch.Tensor            # [Q, Hq, D]
    key_cache: torch.Tensor        # [NB, BS, Hkv, D]
    value_cache: torch.Tensor      # [NB, BS, Hkv, D]
    block_table: torch.Tensor      # [S, max_blocks] int32
    text_positions: torch.Tensor   # [T]
    text_start_loc: torch.Tensor   # [S + 1]
    query_start_loc: torch.Tensor  # [S + 1]
    query_text_idx: torch.Tensor   # [Q]
    window_size: int
    scale: float
    in_window: torch.Tensor        # [NB, BS] bool: slot is in some query's window

    def args(self, **override):
        names = ["query", "key_cache", "value_cache", "block_table", "text_positions",
                 "text_start_loc", "query_start_loc", "query_text_idx", "window_size", "scale"]
        vals = {n: getattr(self, n) for n in names}
        vals.update(override)
        return tuple(vals[n] for n in names)


def build_problem(
    layouts,                  # per seq: list of ("text"|"visual", count) segments
    *,
    window_size=48,
    num_q_heads=4,
    num_kv_heads=2,
    head_dim=64,
    block_size=16,
    dtype=torch.float32,
    queries="decode",         # "decode": last text token; "multi": up to 4 consecutive
    seed=0,
    extra_blocks=3,
    index_dtype=torch.int32,
):
    g = torch.Generator().manual_seed(seed)
    text_pos, queries_idx, q_counts = [], [], []
    seq_lens = []
    for layout in layouts:
        pos, positions = 0, []
        for kind, n in layout:
            if kind == "text":
                positions.extend(range(pos, pos + n))
            pos += n
        seq_lens.append(pos)
        text_pos.append(positions)
        n_text = len(positions)
        if queries == "decode":
            idx = [n_text - 1] if n_text else []
        elif queries == "multi":
            k = min(4, n_text)
            # Draft queries sit near the end of the text; a random end (not always the
            # last token) also exercises queries with written text after them.
            end = int(torch.randint(max(k - 1, n_text - 8), n_text, (1,), generator=g)) if n_text else -1
            idx = list(range(end - k + 1, end + 1))
        elif queries == "none":
            idx = []
        else:
            raise ValueError(queries)
        queries_idx.extend(idx)
        q_counts.append(len(idx))

    # Shuffled physical blocks; the spare ones are used by nobody and pad the table.
    need = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(need) + extra_blocks
    perm = torch.randperm(num_blocks, generator=g)
    spare = perm[sum(need):]
    max_blocks = max(need) + 1
    bt = torch.empty(len(layouts), max_blocks, dtype=torch.int32)
    cursor = 0
    for s, n in enumerate(need):
        bt[s, :n] = perm[cursor:cursor + n]
        cursor += n
        bt[s, n:] = spare[torch.randint(len(spare), (max_blocks - n,), generator=g)]

    nq = len(queries_idx)
    query = (2.0 * torch.randn(nq, num_q_heads, head_dim, generator=g)).to(dtype)
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)

    tsl = [0]
    for p in text_pos:
        tsl.append(tsl[-1] + len(p))
    qsl = [0]
    for c in q_counts:
        qsl.append(qsl[-1] + c)

    in_window = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    for s in range(len(layouts)):
        for i in queries_idx[qsl[s]:qsl[s + 1]]:
            for pos in text_pos[s][max(0, i - window_size + 1): i + 1]:
                in_window[bt[s, pos // block_size], pos % block_size] = True

    flat = [p for ps in text_pos for p in ps]
    return Problem(
        query=query.to(DEVICE),
        key_cache=key_cache.to(DEVICE),
        value_cache=value_cache.to(DEVICE),
        block_table=bt.to(DEVICE),
        text_positions=torch.tensor(flat, dtype=index_dtype, device=DEVICE),
        text_start_loc=torch.tensor(tsl, dtype=index_dtype, device=DEVICE),
        query_start_loc=torch.tensor(qsl, dtype=index_dtype, device=DEVICE),
        query_text_idx=torch.tensor(queries_idx, dtype=index_dtype, device=DEVICE),
        window_size=window_size,
        scale=head_dim ** -0.5,
        in_window=in_window.to(DEVICE),
    )


# One batch covering the awkward cases at once (W = 48 by default):
MIXED_LAYOUTS = [
    [("text", 1)],                                                   # a single text token
    [("text", 7), ("visual", 300), ("text", 20)],                    # text split by a long video
    [("text", 30)],                                                  # window larger than the text
    [("visual", 40), ("text", 1), ("visual", 17)],                   # one text token inside visuals
    [("text", 5), ("visual", 100), ("text", 3), ("visual", 64), ("text", 60)],  # text > window
]


def assert_close(actual, expected, dtype):
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype])


# --------------------------------------------------------------------------------------
# The oracle itself (so the comparisons below mean something)
# --------------------------------------------------------------------------------------
ALL_IMPLS = [
    pytest.param(text_window_attention_naive, id="naive"),
    pytest.param(text_window_attention_torch, id="torch"),
    pytest.param(text_window_attention_triton, id="triton", marks=needs_triton),
]


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_computed_example(impl):
    """Text at positions 0 and 3 of a 4-token sequence, visual at 1..2 (NaN). A query
    at text index 1 with W=2 sees exactly those two keys; W=1 sees only itself."""
    d, block_size = 16, 2
    key_cache = torch.full((3, block_size, 1, d), float("nan"))
    value_cache = torch.full((3, block_size, 1, d), float("nan"))
    block_table = torch.tensor([[2, 0, 1]], dtype=torch.int32)  # logical 0 -> 2, 1 -> 0
    k0, k3 = torch.randn(d), torch.randn(d)
    v0, v3 = torch.randn(d), torch.randn(d)
    key_cache[2, 0, 0], value_cache[2, 0, 0] = k0, v0   # pos 0
    key_cache[0, 1, 0], value_cache[0, 1, 0] = k3, v3   # pos 3
    q = torch.randn(1, 1, d)
    common = (key_cache.to(DEVICE), value_cache.to(DEVICE), block_table.to(DEVICE),
              torch.tensor([0, 3], device=DEVICE), torch.tensor([0, 2], device=DEVICE),
              torch.tensor([0, 1], device=DEVICE), torch.tensor([1], device=DEVICE))
    scale = 0.5

    out = impl(q.to(DEVICE), *common, 2, scale).cpu()
    w = torch.softmax(torch.stack([q[0, 0] @ k0, q[0, 0] @ k3]) * scale, 0)
    torch.testing.assert_close(out[0, 0], w[0] * v0 + w[1] * v3, atol=1e-5, rtol=1e-5)

    out1 = impl(q.to(DEVICE), *common, 1, scale).cpu()
    torch.testing.assert_close(out1[0, 0], v3, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("queries", ["decode", "multi"])
@pytest.mark.parametrize("seed", [1, 2, 4])
def test_window_changes_the_result(queries, seed):
    """Guard against a vacuous suite: on the mixed batch (same seeds as
    test_matches_oracle), W matters, so an implementation that ignored the window or
    attended to every text token would fail the comparisons."""
    p = build_problem(MIXED_LAYOUTS, queries=queries, seed=seed)
    a = text_window_attention_naive(*p.args())
    b = text_window_attention_naive(*p.args(window_size=10**6))
    c = text_window_attention_naive(*p.args(window_size=p.window_size - 1))
    assert not torch.allclose(a, b, atol=1e-3)
    assert not torch.allclose(a, c, atol=1e-3)


# --------------------------------------------------------------------------------------
# Triton and torch against the oracle
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("queries", ["decode", "multi"])
@pytest.mark.parametrize("gqa", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_oracle(dtype, gqa, queries, impl_name):
    p = build_problem(MIXED_LAYOUTS, num_q_heads=2 * gqa, num_kv_heads=2, dtype=dtype,
                      queries=queries, seed=gqa)
    expected = text_window_attention_naive(*p.args())
    actual = IMPLS[impl_name](*p.args())
    assert actual.shape == p.query.shape
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize(
    "head_dim,block_size,gqa",
    [(16, 16, 2), (32, 8, 4), (128, 16, 1), (256, 32, 2), (80, 16, 3), (48, 5, 2)],
    ids=lambda v: str(v),
)
def test_head_dims_and_block_sizes(head_dim, block_size, gqa, impl_name):
    """Powers of two 16..256 plus padded head dims (80, 48), non-power-of-two GQA
    groups (3, like the 9/3 draft) and odd block sizes."""
    p = build_problem(MIXED_LAYOUTS[1:3] + MIXED_LAYOUTS[4:], head_dim=head_dim, block_size=block_size,
                      num_q_heads=2 * gqa, num_kv_heads=2, queries="multi", seed=head_dim)
    expected = text_window_attention_naive(*p.args())
    assert_close(IMPLS[impl_name](*p.args()), expected, torch.float32)


@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("window_size", [1, 5, 150, 10**6])
def test_window_sizes(window_size, impl_name):
    """W=1 (only itself), small, several BLOCK_N chunks of online softmax (150 > 64),
    and a window far larger than any sequence's text."""
    layouts = [
        [("text", 64), ("visual", 200), ("text", 150)],
        [("text", 3), ("visual", 33), ("text", 2)],
        [("text", 100)],
    ]
    p = build_problem(layouts, window_size=window_size, queries="multi", seed=window_size % 97,
                      dtype=torch.bfloat16, num_q_heads=6, num_kv_heads=2)
    expected = text_window_attention_naive(*p.args())
    assert_close(IMPLS[impl_name](*p.args()), expected, torch.bfloat16)


@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
def test_int64_metadata(impl_name):
    p = build_problem(MIXED_LAYOUTS, queries="multi", index_dtype=torch.int64, seed=5)
    assert_close(IMPLS[impl_name](*p.args()), text_window_attention_naive(*p.args()), torch.float32)


# --------------------------------------------------------------------------------------
# Visual slots (and everything outside the window) are never read
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("queries", ["decode", "multi"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_never_reads_visual_or_out_of_window_slots(dtype, queries, impl_name):
    """Fill every slot no query's window covers with NaN -- visual slots, text slots
    before the window or after the query, tails of blocks, unused blocks (which also
    pad the block table). A value read from such a slot, even one multiplied by a zero
    probability, turns the output NaN. (A key read whose score is then replaced by
    -inf would not show here; the kernels mask the K load the same way as the V load.)"""
    p = build_problem(MIXED_LAYOUTS, dtype=dtype, queries=queries, num_q_heads=4, num_kv_heads=1,
                      seed=11, window_size=16)
    impl = IMPLS[impl_name]
    before = impl(*p.args())
    assert torch.isfinite(before.float()).all()

    poison = ~p.in_window
    # The layouts have visual tokens, text outside W=16 and spare blocks: if nothing
    # were poisoned this test would prove nothing.
    assert poison.sum() > 0.9 * poison.numel()
    k = p.key_cache.clone()
    v = p.value_cache.clone()
    k[poison] = float("nan")
    v[poison] = float("nan")
    after = impl(*p.args(key_cache=k, value_cache=v))

    assert torch.isfinite(after.float()).all()
    assert torch.equal(after, before)  # same inputs inside the window -> bitwise the same
    assert_close(after, text_window_attention_naive(*p.args()), dtype)


# --------------------------------------------------------------------------------------
# Layout / API details
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
def test_strided_cache_and_out_buffer(impl_name):
    """vLLM-style caches are views (K and V interleaved in one allocation); `out` may
    be a strided view too. The result must land in `out` and be returned."""
    p = build_problem(MIXED_LAYOUTS, queries="multi", num_q_heads=4, num_kv_heads=2, seed=3)
    kv = torch.stack([p.key_cache, p.value_cache], dim=1)  # [NB, 2, BS, Hkv, D]
    k, v = kv[:, 0], kv[:, 1]
    assert not k.is_contiguous()
    big = torch.full((p.query.shape[0], p.query.shape[1], 2 * p.query.shape[2]), 7.0, device=DEVICE)
    out = big[:, :, ::2]  # stride 2 along head_dim
    ret = IMPLS[impl_name](*p.args(key_cache=k, value_cache=v), out=out)
    assert ret.data_ptr() == out.data_ptr()
    assert_close(out, text_window_attention_naive(*p.args()), torch.float32)
    assert (big[:, :, 1::2] == 7.0).all()  # nothing written between the strided elements


@pytest.mark.parametrize("impl_name", ["torch", pytest.param("triton", marks=needs_triton)])
def test_sequences_without_queries_and_empty_batch(impl_name):
    impl = IMPLS[impl_name]
    p = build_problem(MIXED_LAYOUTS, queries="multi", seed=8)
    # Drop the queries of sequences 1 and 3: their CSR ranges become empty.
    qsl = p.query_start_loc.tolist()
    keep = [q for s in (0, 2, 4) for q in range(qsl[s], qsl[s + 1])]
    counts = [qsl[s + 1] - qsl[s] if s in (0, 2, 4) else 0 for s in range(5)]
    new_qsl = torch.tensor([0] + list(torch.tensor(counts).cumsum(0)), dtype=torch.int32, device=DEVICE)
    keep_t = torch.tensor(keep, device=DEVICE)
    args = p.args(query=p.query[keep_t], query_start_loc=new_qsl, query_text_idx=p.query_text_idx[keep_t])
    assert_close(impl(*args), text_window_attention_naive(*p.args())[keep_t], torch.float32)

    empty = build_problem(MIXED_LAYOUTS, queries="none")
    res = impl(*empty.args())
    assert res.shape == (0, 4, 64)


def test_input_validation():
    p = build_problem(MIXED_LAYOUTS[:2])
    with pytest.raises(ValueError, match="multiple"):
        text_window_attention_torch(*p.args(query=p.query[:, :3]))
    with pytest.raises(ValueError, match="window_size"):
        text_window_attention_torch(*p.args(window_size=0))
    with pytest.raises(ValueError, match="query_start_loc"):
        text_window_attention_torch(*p.args(query_start_loc=p.query_start_loc[:-1]))


# --------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------
def test_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "text_window_attention_torch", lambda *a: calls.append("torch"))
    monkeypatch.setattr(kernels, "text_window_attention_triton", lambda *a: calls.append("triton"))
    monkeypatch.delenv("SPARROW_FORCE_TRITON", raising=False)
    p = build_problem(MIXED_LAYOUTS[:2])
    text_window_attention(*p.args(), backend="torch")
    text_window_attention(*p.args(), backend="triton")
    text_window_attention(*p.args())  # auto
    expected_auto = "triton" if p.query.is_cuda else "torch"
    monkeypatch.setenv("SPARROW_FORCE_TRITON", "1")
    text_window_attention(*p.args())
    assert calls == ["torch", "triton", expected_auto, "triton"]
    with pytest.raises(ValueError, match="backend"):
        text_window_attention(*p.args(), backend="cuda")


@needs_triton
def test_dispatch_end_to_end():
    p = build_problem(MIXED_LAYOUTS, queries="multi", dtype=torch.float16, seed=4)
    a = text_window_attention(*p.args(), backend="triton")
    b = text_window_attention(*p.args(), backend="auto")
    assert_close(a, b, torch.float16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter error")
def test_triton_on_cpu_without_interpreter_raises():
    code = (
        "import torch, sparrow_kernels\n"
        "from sparrow_kernels.text_window_attention_triton import text_window_attention_triton as f\n"
        "q = torch.zeros(1, 1, 16); c = torch.zeros(1, 1, 1, 16)\n"
        "i = torch.zeros(1, dtype=torch.int32); two = torch.tensor([0, 1])\n"
        "try:\n"
        "    f(q, c, c, torch.zeros(1, 1, dtype=torch.int32), i, two, two, i, 4, 1.0)\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', 'TRITON_INTERPRET' in str(e))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "RAISED True" in res.stdout


# --------------------------------------------------------------------------------------
# Full-context baseline
# --------------------------------------------------------------------------------------
def _full_attention_loop(p: Problem) -> torch.Tensor:
    """Oracle: every position 0..pos of each query, visual included."""
    out = torch.empty_like(p.query)
    bs = p.key_cache.shape[1]
    group = p.query.shape[1] // p.key_cache.shape[2]
    qsl, tsl = p.query_start_loc.tolist(), p.text_start_loc.tolist()
    for s in range(len(qsl) - 1):
        for q in range(qsl[s], qsl[s + 1]):
            qpos = int(p.text_positions[tsl[s] + int(p.query_text_idx[q])])
            slots = [(int(p.block_table[s, t // bs]), t % bs) for t in range(qpos + 1)]
            k = torch.stack([p.key_cache[b, o] for b, o in slots]).float()
            v = torch.stack([p.value_cache[b, o] for b, o in slots]).float()
            for h in range(p.query.shape[1]):
                w = torch.softmax(k[:, h // group] @ p.query[q, h].float() * p.scale, 0)
                out[q, h] = (w @ v[:, h // group]).to(out.dtype)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_full_attention_matches_loop(dtype):
    layouts = [[("text", 4), ("visual", 70), ("text", 6)], [("text", 9)], [("visual", 20), ("text", 2)]]
    p = build_problem(layouts, queries="multi", dtype=dtype, num_q_heads=6, num_kv_heads=2, seed=2)
    assert_close(full_attention_torch(*p.args()), _full_attention_loop(p), dtype)


def test_full_attention_equals_window_without_visual_tokens():
    p = build_problem([[("text", 40)], [("text", 13)]], queries="multi", window_size=10**6, seed=6)
    assert_close(full_attention_torch(*p.args()), text_window_attention_torch(*p.args()), torch.float32)
