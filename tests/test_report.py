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
