"""The plugin registers inside a Ray worker process (vLLM's Ray executor runs its workers there)."""

import pytest

ray = pytest.importorskip("ray")


def test_plugin_registers_in_a_ray_worker():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        @ray.remote
        def probe():
            import importlib.metadata
            import os

            from vllm.plugins import load_general_plugins

            load_general_plugins()  # what every vLLM worker does at start
            from vllm.engine.arg_utils import EngineArgs
            from vllm.transformers_utils.configs.speculators.algos import SUPPORTED_SPECULATORS_TYPES

            eps = [ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")]
            return {"pid": os.getpid(), "entry_point": "sparrow_vllm:register" in eps,
                    "speculators": "sparrow" in SUPPORTED_SPECULATORS_TYPES,
                    "engine_args_patched": getattr(EngineArgs.create_speculative_config, "_sparrow", False)}

        import os

        got = ray.get(probe.remote(), timeout=300)
        assert got["pid"] != os.getpid()
        assert got == {**got, "entry_point": True, "speculators": True, "engine_args_patched": True}
    finally:
        ray.shutdown()
