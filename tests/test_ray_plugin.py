"""The plugin registers inside a Ray worker process (vLLM's Ray executor runs its workers there).

vLLM 0.32.0: ``--distributed-executor-backend ray`` starts ``RayWorkerWrapper`` actors
(``vllm/v1/executor/ray_utils.py``), a ``WorkerWrapperBase`` whose ``init_worker`` calls
``vllm.plugins.load_general_plugins()`` before building the worker and its model runner
(``vllm/v1/worker/worker_base.py``). The probe does the same, then checks what such a
worker needs: the draft architecture in its ModelRegistry and the model runner patched
to build the Sparrow proposer.
"""

import pytest

ray = pytest.importorskip("ray")


def test_plugin_registers_in_a_ray_worker():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote
        def probe():
            import importlib.metadata
            import os

            from vllm.plugins import load_general_plugins

            load_general_plugins()  # what WorkerWrapperBase.init_worker does at start
            from vllm import ModelRegistry
            from vllm.engine.arg_utils import EngineArgs
            from vllm.transformers_utils.configs.speculators.algos import SUPPORTED_SPECULATORS_TYPES
            from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # the CPU runner's base class

            from sparrow_vllm.serving.vllm_compat import DRAFT_ARCH

            eps = [ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")]
            return {"pid": os.getpid(), "entry_point": "sparrow_vllm:register" in eps,
                    "speculators": "sparrow" in SUPPORTED_SPECULATORS_TYPES,
                    "engine_args_patched": getattr(EngineArgs.create_speculative_config, "_sparrow", False),
                    "draft_arch": DRAFT_ARCH in ModelRegistry.get_supported_archs(),
                    "model_runner_patched": getattr(GPUModelRunner.__init__, "_sparrow", False)}

        import os

        got = ray.get(probe.remote(), timeout=300)
        assert got["pid"] != os.getpid()
        assert got == {**got, "entry_point": True, "speculators": True, "engine_args_patched": True,
                       "draft_arch": True, "model_runner_patched": True}
    finally:
        ray.shutdown()
