"""Random-weight drafts in the Sparrow draft-directory format, and a tiny random target, for tests.

A random draft proposes garbage: the lossless tests must still see the target's exact
output (only acceptance drops). The directory is written by the same code as a trained
draft (``SparrowDraftConfig`` + ``save_draft``), so the format is tested, not copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparrow_vllm.draft.config import SparrowDraftConfig
from sparrow_vllm.draft.export import save_draft
from sparrow_vllm.draft.model import SparrowDraftModel


def write_random_draft(out: Path, target_dir: Path, anchor_layers=(15,), window_size=64,
                       draft_vocab: int = 1024, intermediate: int = 512, seed: int = 0,
                       recipe: str = "sparrow") -> Path:
    tcfg = json.loads((Path(target_dir) / "config.json").read_text())
    text = tcfg.get("text_config", tcfg)
    H, heads = text["hidden_size"], text["num_attention_heads"]
    cfg = SparrowDraftConfig(
        recipe=recipe, attention="text_window" if recipe == "sparrow" else "full",
        anchor_layers=list(anchor_layers), window_size=window_size,
        target_hidden_size=H, target_num_layers=text["num_hidden_layers"], target_vocab_size=text["vocab_size"],
        hidden_size=H, num_attention_heads=heads, num_key_value_heads=text["num_key_value_heads"],
        head_dim=H // heads, intermediate_size=intermediate, draft_vocab_size=draft_vocab,
        verifier_name_or_path=str(target_dir), verifier_architectures=tcfg["architectures"],
        num_speculative_tokens=3, torch_dtype="float32")
    torch.manual_seed(seed)
    model = SparrowDraftModel(cfg)
    if cfg.has_vocab_map:
        model.set_vocab(torch.arange(draft_vocab))  # the first draft_vocab target ids
    return save_draft(model, out)


def write_tiny_target(out: Path, seed: int) -> Path:
    """A tiny random Qwen2.5-VL (4 layers, width 64) with the real tokenizer and processor."""
    from transformers import AutoTokenizer, LlamaConfig, Qwen2_5_VLForConditionalGeneration

    from sparrow_vllm.target.config import extend_tokenizer, make_config, make_processor
    from sparrow_vllm.target.paths import GGUF_FILE, smollm2_gguf_dir

    tok = AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=GGUF_FILE)
    ids = extend_tokenizer(tok)
    lc = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e5,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = make_config(lc, ids, len(tok))
    v = cfg.vision_config
    v.depth, v.hidden_size, v.intermediate_size, v.num_heads = 1, 32, 64, 2
    v.out_hidden_size, v.fullatt_block_indexes = 64, [0]
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).float().eval()
    model.save_pretrained(out)
    processor = make_processor(tok)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_tiny_llava_target(out: Path, seed: int) -> Path:
    """A tiny random LLaVA-OneVision (4 layers, width 64, 1-layer SigLIP) with the real
    tokenizer and processor of the embedded LLaVA-OV target."""
    from transformers import AutoTokenizer, LlamaConfig, LlavaOnevisionForConditionalGeneration

    from sparrow_vllm.target.llava_onevision import extend_tokenizer, make_config, make_processor
    from sparrow_vllm.target.paths import GGUF_FILE, smollm2_gguf_dir

    tok = AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=GGUF_FILE)
    ids = extend_tokenizer(tok)
    lc = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rope_theta=1e5,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = make_config(lc, ids, len(tok))
    v = cfg.vision_config
    v.num_hidden_layers, v.hidden_size, v.intermediate_size, v.num_attention_heads = 1, 32, 64, 2
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).float().eval()
    model.save_pretrained(out)
    processor = make_processor(tok)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    return out
