"""The Sparrow draft: config, model, data extraction, training and offline evaluation.

``SparrowDraftConfig`` (``config.py``) is the contract with the vLLM model class; the math is
in ``model.py`` (mirrors vLLM 0.32 ``Eagle3LlamaForCausalLM``); ``propose.py`` is the
step-by-step inference the vLLM proposer must reproduce.
"""

from sparrow_vllm.draft.config import DraftConfigError, SparrowDraftConfig
from sparrow_vllm.draft.export import load_draft, save_draft
from sparrow_vllm.draft.model import SparrowDraftModel

__all__ = ["DraftConfigError", "SparrowDraftConfig", "SparrowDraftModel", "load_draft", "save_draft"]
