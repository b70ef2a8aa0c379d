"""Supported Video LLM families, one adapter each (see ``base.py`` for what an adapter is)."""

from __future__ import annotations

import json
from pathlib import Path

from sparrow_vllm.families.base import FamilyAdapter, UnsupportedFamilyError

_FAMILIES = {
    "qwen2.5-vl": ("sparrow_vllm.families.qwen2_5_vl", "Qwen25VLAdapter"),
    "llava-onevision": ("sparrow_vllm.families.llava_onevision", "LlavaOneVisionAdapter"),
}
# HF / vLLM architecture -> family name (kept here so an unsupported target fails before
# anything heavy is imported).
ARCHITECTURES = {
    "Qwen2_5_VLForConditionalGeneration": "qwen2.5-vl",
    "LlavaOnevisionForConditionalGeneration": "llava-onevision",
}
FAMILY_NAMES = tuple(_FAMILIES)
DEFAULT_FAMILY = "qwen2.5-vl"
_loaded: dict[str, FamilyAdapter] = {}


def get_family(name: str) -> FamilyAdapter:
    """The adapter of family ``name`` (``qwen2.5-vl``, ``llava-onevision``)."""
    if name not in _FAMILIES:
        raise UnsupportedFamilyError(f"unknown model family {name!r}; supported: {list(_FAMILIES)}")
    if name not in _loaded:
        import importlib

        module, cls = _FAMILIES[name]
        _loaded[name] = getattr(importlib.import_module(module), cls)()
    return _loaded[name]


def _architectures_of(config) -> list[str]:
    if isinstance(config, (str, Path)):
        path = Path(config) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
        config = json.loads(path.read_text())
    if isinstance(config, dict):
        return list(config.get("architectures") or [])
    return list(getattr(config, "architectures", None) or [])


def family_of(config) -> FamilyAdapter:
    """The adapter for a target given as a HF config (object or dict) or a model directory.

    Raises :class:`UnsupportedFamilyError` naming the architecture, the supported ones and
    what a new family needs."""
    archs = _architectures_of(config)
    for arch in archs:
        if arch in ARCHITECTURES:
            return get_family(ARCHITECTURES[arch])
    raise UnsupportedFamilyError(
        f"Sparrow has no adapter for target architecture {archs or '(none in config.json)'}; "
        f"supported: {', '.join(f'{a} ({n})' for a, n in ARCHITECTURES.items())}. A new family needs an "
        f"adapter in sparrow_vllm/families/ (see its base.py and the README section "
        f"'Supported model families')."
    )


__all__ = ["ARCHITECTURES", "DEFAULT_FAMILY", "FAMILY_NAMES", "FamilyAdapter", "UnsupportedFamilyError",
           "family_of", "get_family"]
