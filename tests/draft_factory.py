"""Random-weight drafts in the Sparrow draft-directory format, for engine tests.

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
