"""benchmarks/report.py: a ratio between cells of two runs is marked, one side by side is not."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("report", None)
    import report

    monkeypatch.setattr(report, "_plot_long", lambda *a, **k: None)
    return report


def _cell(method, draft, command, tok_s):
    return {"engine": "offline", "target": "runs/t", "task": "narrate", "method": method, "visual_tokens": 1024,
            "batch": 1, "draft": draft, "command": command, "requests": 16, "output_tokens": 2000,
            "decode_tok_s": tok_s, "e2e_s_median": 1.0, "tau": None if method == "none" else 3.0,
            "speedup_vs_none": tok_s / 20.0, "speedup_vs_eagle3": tok_s / 50.0, "greedy_mismatches": 0}


def test_long_tables_mark_ratios_across_runs(report, tmp_path):
    path = tmp_path / "long.json"
    cells = [_cell("none", None, "run A", 20.0), _cell("eagle3", "d/ea", "run A", 50.0),
             _cell("sparrow", "d/sp1", "run A", 45.0), _cell("sparrow", "d/sp2", "run B", 55.0)]
    path.write_text(json.dumps({"cells": cells, "hardware": {"cpu": "cpu", "cores": 2, "note": "CPU"}}))
    rows = {line.split(" | ")[7]: line for line in report.long(str(path)).splitlines() if line.startswith("| t |")}
    assert "2.25x |" in rows["sp1"] and "\\*" not in rows["sp1"]  # side by side with none and eagle3
    assert "2.75x\\* | 1.10x\\* |" in rows["sp2"]  # against the cells of another run
    assert report.CROSS_RUN in report.long(str(path))
    lengths = report.long_lengths(str(path))
    assert "| 2.25x |" in lengths and "| 2.75x\\* |" in lengths and report.CROSS_RUN in lengths
    # one run only: nothing marked, no note
    path.write_text(json.dumps({"cells": cells[:3], "hardware": {"cpu": "cpu", "cores": 2, "note": "CPU"}}))
    assert "\\*" not in report.long(str(path)) + report.long_lengths(str(path))


def test_repeats_compare_within_their_repeat_and_report_mean_and_range(report, tmp_path):
    import bench_long

    cells = []
    for rep, none_tok_s, sp_tok_s in ((0, 20.0, 40.0), (1, 10.0, 30.0)):
        for method, draft, tok_s in (("none", None, none_tok_s), ("sparrow", "d/sp", sp_tok_s)):
            c = _cell(method, draft, "run A", tok_s) | {"repeat": rep, "outputs": [{"token_ids": [1, 2, rep]}]}
            cells.append(c)
    cells[-1]["outputs"] = [{"token_ids": [1, 2, 3]}]  # the second repeat's Sparrow answer differs
    bench_long.add_ratios(cells)
    sp = [c for c in cells if c["method"] == "sparrow"]
    assert [c["speedup_vs_none"] for c in sp] == [2.0, 3.0]  # each against the none cell of its repeat
    assert [c["greedy_mismatches"] for c in sp] == [0, 1]
    # a cell written before repeats existed is repeat 0
    assert bench_long.key({k: v for k, v in cells[0].items() if k != "repeat"}) == bench_long.key(cells[0])
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"cells": cells, "hardware": {"cpu": "cpu", "cores": 2, "note": "CPU"}}))
    table = report.long(str(path))
    assert "| 15.0 (10.0-20.0) |" in table and "3.00 / 2.50x (2.00-3.00x) |" in table
    assert "| 0 / 1 |" not in table and "| - / 1 |" in table and report.REPEATS_NOTE in table
    assert "| 2.50x (2.00-3.00x) |" in report.long_lengths(str(path))


@pytest.mark.parametrize("arch,allowed", [("qwen2.5-vl", True), ("llava-onevision", False)])
def test_a_context_past_the_config_is_allowed_only_for_compressed_video_positions(report, tmp_path, monkeypatch,
                                                                                 arch, allowed):
    """50k visual tokens on the embedded targets (max_position_embeddings 32768): Qwen2.5-VL's
    mRoPE keeps the positions short, LLaVA-OV's plain positions would run past the trained ones."""
    import bench_long

    from sparrow_vllm.families import get_family

    import os

    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0")  # restored after the test
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 32768}}))
    family = get_family(arch)
    assert bench_long.allow_past_config_length(family, str(tmp_path), 29696)  # within: nothing to allow
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in os.environ
    assert bench_long.allow_past_config_length(family, str(tmp_path), 55296) == allowed
    assert ("VLLM_ALLOW_LONG_MAX_MODEL_LEN" in os.environ) == allowed


@pytest.mark.parametrize("arch,lifted", [("qwen2.5-vl", True), ("llava-onevision", False)])
def test_an_eagle3_draft_gets_the_engines_length_only_past_its_config(report, tmp_path, monkeypatch, arch, lifted):
    """vLLM drafts nothing past the draft's max_model_len (its config's max_position_embeddings,
    here in the speculators format's ``transformer_layer_config``): an EAGLE-3 draft is given the
    engine's length with the speculative config's own ``max_model_len`` where video positions are
    compressed; a Sparrow engine lifts the cap itself and its config is left alone."""
    import os

    import bench_long

    from sparrow_vllm.families import get_family

    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0")  # restored after the test
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
    (tmp_path / "config.json").write_text(json.dumps({"transformer_layer_config": {"max_position_embeddings": 32768}}))
    family = get_family(arch)
    eagle3 = {"method": "eagle3", "model": str(tmp_path), "num_speculative_tokens": 5}
    assert bench_long.lift_drafter_cap(family, eagle3, 29696) == eagle3  # within the config
    assert bench_long.lift_drafter_cap(family, None, 55296) is None
    sparrow = eagle3 | {"method": "sparrow"}
    assert bench_long.lift_drafter_cap(family, sparrow, 55296) == sparrow
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in os.environ
    got = bench_long.lift_drafter_cap(family, eagle3, 55296)
    assert got == (eagle3 | {"max_model_len": 55296} if lifted else eagle3)
    assert ("VLLM_ALLOW_LONG_MAX_MODEL_LEN" in os.environ) == lifted


def test_adaptive_k_compares_cells_of_one_workload_only(report, tmp_path, monkeypatch):
    """bench_adaptive_k.py keeps the qa and the long-answer (narrate) workloads, on their own
    targets, in one file: a speedup is against no speculation of the same task and target, the
    best fixed k is per workload, a file of one workload reads as qa on the embedded target, and
    the report names the workload of each row once there are several."""
    import bench_adaptive_k as ak

    def cell(task, target, method, k, tok_s):
        c = {"visual_tokens": 1024, "batch": 4, "method": method, "k": k, "repeat": 0, "requests": 16,
             "decode_tok_s": tok_s, "end_to_end_tok_s": tok_s / 2, "k_steps": {str(k or 0): 10}}
        return c | ({"task": task} if task else {}) | ({"target": target} if target else {})

    old = [cell("qa", None, "none", None, 10.0), cell("qa", None, "fixed", 5, 20.0), cell("qa", None, "fixed", 3, 30.0)]
    new = [cell("narrate", "runs/t200", "none", None, 40.0), cell("narrate", "runs/t200", "fixed", 5, 60.0),
           cell("narrate", "runs/t200", "fixed", 3, 50.0)]
    cells = old + new
    ak.add_speedups(cells)
    speed = {(c.get("task"), c["method"], c.get("k")): c["speedup_vs_none"] for c in cells}
    assert speed[("qa", "fixed", 5)] == 2.0 and speed[("narrate", "fixed", 5)] == 1.5
    assert speed[("qa", "best_fixed", 3)] == 3.0 and speed[("narrate", "best_fixed", 5)] == 1.5
    path = tmp_path / "ak.json"
    path.write_text(json.dumps({"cells": old, "config": {"k_max": 5}, "k_table": {"rows": []}}))
    data = ak.load(path)
    assert data["configs"] == {"qa embedded": {"k_max": 5}} and data["k_tables"] == {"qa embedded": {"rows": []}}
    assert ak.have(data, "qa", ak.EMBEDDED, 1024, "fixed", 5, 0)
    assert not ak.have(data, "narrate", "runs/t200", 1024, "fixed", 5, 0)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "_plot_adaptive", lambda *a, **k: None)
    path.write_text(json.dumps({"cells": cells, "hardware": {}, "configs": {"qa embedded": {"k_max": 5}}}))
    rows = [r for r in report.adaptive_k("ak").splitlines() if r.startswith("| narrate") or r.startswith("| qa")]
    assert rows == ["| narrate | runs/t200 | 1,024 | 4 | 16 | 1.50x | 1.50x (5) | - | - |",
                    "| qa | embedded | 1,024 | 4 | 16 | 2.00x | 3.00x (3) | - | - |"]
