"""What every benchmark records: the machine it was measured on (``sparrow tune`` records it too)."""

from sparrow_vllm.harness.hardware import hardware  # noqa: F401
