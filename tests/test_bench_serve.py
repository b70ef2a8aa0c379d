"""``benchmarks/bench_serve.py --quick`` end to end on a tiny load: the JSON is well formed.

Never asserts a speed (machines are noisy); only that every number is there, the counts add
up, the servers are gone afterwards, and greedy outputs match across methods (lossless).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_serve") / "bench_serve.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--quick", "--methods", "none", "sparrow",
           "--frames", "16", "--requests", "2", "--max-tokens", "24", "--time-budget", "170", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), out, proc.stdout


def test_json_is_well_formed(bench):
    res, out, _ = bench
    assert {"cpu", "cores", "vllm", "note"} <= set(res["hardware"])
    assert res["complete"] and not res.get("errors")
    assert list(res["methods"]) == ["none", "sparrow"]
    assert out.with_suffix(".png").stat().st_size > 0
    for method, rows in res["methods"].items():
        assert [r["concurrency"] for r in rows] == [1, 4]
        for r in rows:
            assert r["requests"] == 2 == r["completed"] + r["failed"] and r["failed"] == 0
            assert len(r["outputs"]) == r["requests"]
            assert r["output_tokens"] == sum(o["output_tokens"] for o in r["outputs"]) > 0
            for o in r["outputs"]:
                assert o["ok"] and len(o["token_ids"]) == o["output_tokens"] <= 24
                assert o["prompt_tokens"] >= 128  # 16 frames kept at 2 fps -> 128 visual tokens
                assert 0 < o["ttft_s"] <= o["e2e_s"]
            for key in ("ttft_s_median", "tpot_s_median", "e2e_s_median", "output_throughput_tok_s"):
                assert r[key] is not None and r[key] > 0, key
            assert r["by_frames"]["16"]["requests"] == 2
            if method == "none":
                assert r["num_drafts"] == 0 and r["mean_accepted_length"] is None
            else:
                assert r["num_drafts"] > 0 and 1 <= r["mean_accepted_length"] <= 1 + res["config"]["k"]
                assert len(r["acceptance_per_position"]) == res["config"]["k"]
                assert r["num_accepted_tokens"] <= r["num_draft_tokens"]
                assert "tpot_speedup_vs_none" in r and "throughput_ratio_vs_none" in r


def test_servers_stopped(bench):
    servers = bench[0]["servers"]
    assert set(servers) == {"none", "sparrow"}
    for s in servers.values():  # each server ran in its own process group, led by its PID
        with pytest.raises(ProcessLookupError):
            os.killpg(s["pid"], 0)


def test_greedy_outputs_identical_across_methods(bench):
    g = bench[0]["greedy_mismatches"]
    assert g["reference"] == "none" and g["expected"] == 0
    assert g["compared"] == {"sparrow": 4}
    assert g["total"] == 0 and g["mismatches"] == {"sparrow": 0}, g["details"]


def test_progress_line_per_level(bench):
    lines = [x for x in bench[2].splitlines() if x.startswith("[") and " c= " in x]
    assert len(lines) == 4  # 2 methods x 2 concurrency levels
