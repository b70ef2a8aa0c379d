"""Adaptive k without an engine: the cost model, the k table, "auto" in the config, the metric.
Through vLLM: tests/test_vllm_sparrow.py::test_auto_k_follows_the_table_by_batch_and_context."""

import json
from types import SimpleNamespace

import pytest

from sparrow_vllm.serving.adaptive import (MIN_GAIN, KTable, KTableError, batch_schedule, best_k,
                                            expected_tokens, fit_table, predicted_speedup)
from sparrow_vllm.serving.config import SparrowConfigError, translate
from sparrow_vllm.serving.metrics import step_k
from test_spec_config import _draft, target  # noqa: F401  (fixture)

ACC = [0.9, 0.8, 0.6, 0.4, 0.2]  # per-position acceptance: falls with the position


def _steps(per_token: float) -> dict[int, float]:
    """A step of k drafts costs 1 + per_token * k plain steps (a CPU-like verify)."""
    return {k: 1.0 + per_token * k for k in range(6)}


def test_expected_tokens_adds_the_per_position_acceptance():
    assert expected_tokens(ACC, 0) == 1.0
    assert expected_tokens(ACC, 2) == pytest.approx(2.7)
    assert expected_tokens(ACC, 5) == pytest.approx(3.9)
    assert predicted_speedup(ACC, {2: 1.5}, 1.0, 2) == pytest.approx(1.8)


def test_best_k_trades_acceptance_against_step_cost():
    # cheap verify (a GPU at batch 1): every position pays, draft all 5
    assert best_k(ACC, _steps(0.02), 1.0)[0] == 5
    # each drafted token costs 0.3 plain steps: stop where the next position's acceptance
    # no longer pays (E/(1+0.3k): k=2 -> 1.69, k=3 -> 1.74, k=4 -> 1.68)
    k, s = best_k(ACC, _steps(0.3), 1.0)
    assert k == 3 and s == pytest.approx(3.3 / 1.9)
    # a verify as dear as the tokens it checks (batch 16 on 2 cores): never speculate
    assert best_k(ACC, _steps(1.0), 1.0)[0] == 0
    # a predicted gain inside the margin is not taken
    assert best_k([0.04, 0.0, 0.0, 0.0, 0.0], {0: 1.0, 1: 1.0}, 1.0)[0] == 0
    assert 1.04 < MIN_GAIN


def test_batch_schedule_is_vllms_and_takes_the_larger_batchs_k():
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    s = batch_schedule({1: 5, 4: 3, 16: 0, 64: 0})
    assert s == [[1, 1, 5], [2, 4, 3], [5, 1 << 20, 0]]
    dense = build_dynamic_sd_schedule_lookup(s, 64, 5)
    assert dense[1] == 5 and dense[2] == dense[4] == 3 and dense[5] == dense[64] == 0


def _cells(ratio_short: float, ratio_long: float) -> list[dict]:
    cells = []
    for vt, ratio in ((1024, ratio_short), (25000, ratio_long)):
        for b in (1, 4):
            cells.append({"visual_tokens": vt, "context": vt + 50, "batch": b, "k": None, "step_s": 0.1})
            for k in range(1, 6):
                cells.append({"visual_tokens": vt, "context": vt + 50, "batch": b, "k": k,
                              "step_s": 0.1 * (1 + ratio * b * k)})
    return cells


def test_fit_keeps_the_context_axis_only_where_it_changes_k():
    t = fit_table(_cells(0.02, 0.3), ACC, 5)
    assert t.contexts == [1074, 25050]
    assert t.schedules[0] != t.schedules[1]
    assert t.row(900) == 0 and t.row(3000) == 0 and t.row(8000) == 1 and t.row(60000) == 1
    same = fit_table(_cells(0.02, 0.02), ACC, 5)
    assert same.contexts == [1074] and len(same.schedules) == 1


def test_k_table_round_trip_and_errors(tmp_path):
    t = fit_table(_cells(0.02, 0.3), ACC, 5, {"cpu": "test"})
    p = tmp_path / "k_table.json"
    p.write_text(json.dumps(t.to_json()))
    back = KTable.read(p)
    assert back.contexts == t.contexts and back.schedules == t.schedules and back.k_max == 5
    with pytest.raises(KTableError, match="sparrow tune"):
        KTable.read(tmp_path / "none.json")
    with pytest.raises(KTableError, match="more than its k_max"):
        KTable(contexts=[1], schedules=[[[1, 4, 6]]], k_max=5)
    with pytest.raises(KTableError, match="must start at 1"):
        KTable(contexts=[1], schedules=[[[2, 4, 1]]], k_max=5)


def test_auto_reads_the_drafts_table(tmp_path, target):  # noqa: F811
    t, tmc = target
    d = _draft(tmp_path, t)
    with pytest.raises(SparrowConfigError, match="auto.*sparrow tune"):
        translate({"method": "sparrow", "model": str(d), "num_speculative_tokens_per_batch_size": "auto"}, tmc)
    (d / "k_table.json").write_text(json.dumps(
        KTable(contexts=[100, 10000], schedules=[[[1, 2, 4], [3, 8, 0]], [[1, 8, 1]]], k_max=4).to_json()))
    cfg, sparrow = translate({"method": "sparrow", "model": str(d), "num_speculative_tokens_per_batch_size": "auto"}, tmc)
    assert cfg["num_speculative_tokens_per_batch_size"] == [[1, 2, 4], [3, 8, 0]]
    assert cfg["num_speculative_tokens"] == 4 == sparrow.num_speculative_tokens


def test_step_k_reads_the_steps_drafts():
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm.v1.spec_decode.metrics import SpecDecodingStats

    sd = SpecDecodingStats.new(5)
    for _ in range(3):
        sd.observe_draft(num_draft_tokens=2, num_accepted_tokens=1)
    assert step_k(SchedulerStats(num_running_reqs=3, spec_decoding_stats=sd)) == 2.0
    assert step_k(SchedulerStats(num_running_reqs=3)) == 0.0  # decoding, no drafts: k = 0
    assert step_k(SchedulerStats(num_running_reqs=0)) is None
    assert step_k(None) is None


def test_the_k_logger_is_idle_without_sparrow():
    from sparrow_vllm.serving.metrics import SparrowKLogger

    plain = SimpleNamespace(speculative_config=None, model_config=SimpleNamespace(served_model_name="m"))
    log = SparrowKLogger(plain, 0)
    assert log.metric is None
    log.record(None, None)  # nothing registered, nothing raised
