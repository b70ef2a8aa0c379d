"""Random-weight drafts in the Sparrow draft-directory format, for engine tests.

A random draft proposes garbage: the lossless tests must still see the target's exact
output (only acceptance drops).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_random_draft(out: Path, target_dir: Path, anchor_layers=(15,), window_size=64,
                       draft_vocab: int = 1024, intermediate: int = 512, seed: int = 0,
                       recipe: str = "sparrow") -> Path:
    tcfg = json.loads((Path(target_dir) / "config.json").read_text())
    text = tcfg.get("text_config", tcfg)
    H, V, L = text["hidden_size"], text["vocab_size"], text["num_hidden_layers"]
    heads, kv = text["num_attention_heads"], text["num_key_value_heads"]
    hd = H // heads
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.02)  # noqa: E731
    A = len(anchor_layers)
    w = {
        "fc.weight": r(H, A * H),
        "midlayer.input_layernorm.weight": torch.ones(H),
        "midlayer.hidden_norm.weight": torch.ones(H),
        "midlayer.self_attn.q_proj.weight": r(heads * hd, 2 * H),
        "midlayer.self_attn.k_proj.weight": r(kv * hd, 2 * H),
        "midlayer.self_attn.v_proj.weight": r(kv * hd, 2 * H),
        "midlayer.self_attn.o_proj.weight": r(H, heads * hd),
        "midlayer.post_attention_layernorm.weight": torch.ones(H),
        "midlayer.mlp.gate_proj.weight": r(intermediate, H),
        "midlayer.mlp.up_proj.weight": r(intermediate, H),
        "midlayer.mlp.down_proj.weight": r(H, intermediate),
        "norm.weight": torch.ones(H),
        "lm_head.weight": r(draft_vocab, H),
    }
    ids = torch.arange(draft_vocab)  # the first draft_vocab target ids
    w["d2t"] = torch.zeros(draft_vocab, dtype=torch.int64) + (ids - ids)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[:draft_vocab] = True
    w["t2d"] = t2d
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.items()}, str(out / "model.safetensors"))
    cfg = {
        "speculators_model_type": recipe,
        "speculators_version": "0.3.0",
        "architectures": ["Eagle3SparrowForCausalLM" if recipe == "sparrow" else "Eagle3LlamaForCausalLM"],
        "transformer_layer_config": {
            "model_type": "llama", "hidden_size": H, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": hd, "intermediate_size": intermediate,
            "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "max_position_embeddings": 32768, "vocab_size": V, "hidden_act": "silu",
            "tie_word_embeddings": False,
        },
        "draft_vocab_size": draft_vocab, "target_hidden_size": H, "norm_before_residual": False,
        "eagle_aux_hidden_state_layer_ids": list(anchor_layers),
        "speculators_config": {
            "algorithm": recipe,
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": str(target_dir), "architectures": tcfg["architectures"]},
        },
    }
    if recipe == "sparrow":
        cfg["sparrow"] = {"anchor_layers": list(anchor_layers), "window_size": window_size,
                          "num_layers": 1, "target_hidden_size": H, "target_num_layers": L,
                          "target_vocab_size": V}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out
