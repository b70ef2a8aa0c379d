"""The embedded default target: a small Qwen2.5-VL Video LLM on a SmolLM2-135M backbone."""

from sparrow_vllm.target.paths import default_target_dir

__all__ = ["default_target_dir"]
