"""The machine a measurement was made on: benchmarks and `sparrow tune` record it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path


def hardware() -> dict:
    """CPU model, cores and the torch and vLLM versions, for a benchmark's JSON.

    Versions come from the installed distributions, so a benchmark that never starts vLLM
    (bench_kernels.py) does not import it; vLLM's local label (``+cpu``) is left out, as
    ``vllm.__version__`` leaves it out.
    """
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "vllm": version("vllm").split("+")[0], "torch": version("torch")}
