"""The k Sparrow drafts per step, on ``/metrics`` beside vLLM's ``vllm:spec_decode_*`` counters.

A vLLM stat logger, given to a Sparrow engine's ``AsyncLLM`` (``vllm serve``) by
``vllm_compat`` patch 10: each engine step's scheduler stats say how many draft tokens the step verified
(``spec_decoding_stats``); their mean per request is the k the step ran, 0 for a step that
decoded without drafts. Engines without Sparrow register nothing.

PromQL, mean k over the last minute::

    rate(sparrow:num_draft_tokens_per_step_sum[1m]) / rate(sparrow:num_draft_tokens_per_step_count[1m])
"""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase

METRIC = "sparrow:num_draft_tokens_per_step"  # not "vllm:": vLLM unregisters those at start
_histogram = None


def _k_histogram(k_max: int):
    global _histogram
    if _histogram is None:
        import prometheus_client

        _histogram = prometheus_client.Histogram(
            METRIC, "Draft tokens per request of each engine step (the k the step ran; 0: no drafts).",
            labelnames=["model_name", "engine"], buckets=[k + 0.5 for k in range(k_max + 1)])
    return _histogram


def step_k(scheduler_stats) -> float | None:
    """The k of one engine step from its scheduler stats; None for a step with no running
    request."""
    if scheduler_stats is None:
        return None
    sd = scheduler_stats.spec_decoding_stats
    if sd is not None and sd.num_drafts:
        return sd.num_draft_tokens / sd.num_drafts
    return 0.0 if scheduler_stats.num_running_reqs else None


class SparrowKLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        from sparrow_vllm.serving.config import sparrow_config_of

        spec = vllm_config.speculative_config
        self.metric = None
        if sparrow_config_of(spec) is not None:
            self.metric = _k_histogram(spec.num_speculative_tokens).labels(
                model_name=vllm_config.model_config.served_model_name, engine=str(engine_index))

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if self.metric is None:
            return
        k = step_k(scheduler_stats)
        if k is not None:
            self.metric.observe(k)

    def log_engine_initialized(self):
        pass
