"""Draft directories: ``config.json`` (speculators layout) + ``model.safetensors`` (vLLM eagle3 names).

The target's embedding matrix is not part of the draft: vLLM shares the target's
``embed_tokens`` with an eagle3 draft whose checkpoint has none, and ``load_draft`` takes it
from the target checkpoint (or leaves zeros when no target is given).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparrow_vllm.draft.config import SparrowDraftConfig
from sparrow_vllm.draft.model import SparrowDraftModel

WEIGHTS = "model.safetensors"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def export_state_dict(model: SparrowDraftModel) -> dict[str, torch.Tensor]:
    """Tensors as written to ``model.safetensors``: float weights in ``config.torch_dtype``,
    ``d2t`` int64 and ``t2d`` bool only when the draft vocab is reduced."""
    cfg = model.config
    dtype = DTYPES[cfg.torch_dtype]
    out = {}
    for name, t in model.state_dict().items():
        if name in ("d2t", "t2d"):
            if cfg.has_vocab_map:
                out[name] = t.detach().clone().contiguous()
            continue
        out[name] = t.detach().to(dtype).contiguous()
    return out


def save_draft(model: SparrowDraftModel, out_dir, extra: dict | None = None) -> Path:
    """Write ``out_dir/{config.json, model.safetensors}`` (+ ``training.json`` if ``extra``)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save(out_dir)
    save_file(export_state_dict(model), str(out_dir / WEIGHTS), metadata={"format": "pt"})
    if extra is not None:
        (out_dir / "training.json").write_text(json.dumps(extra, indent=2) + "\n")
    return out_dir


def load_target_embedding(target_dir) -> torch.Tensor:
    """``[target_vocab, hidden]`` fp32: the text embedding matrix of a HF target checkpoint."""
    from safetensors import safe_open

    target_dir = Path(target_dir)
    files = sorted(target_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in target dir {target_dir}; build it with `sparrow build-target`")
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k.endswith("embed_tokens.weight") and "visual" not in k:
                    return st.get_tensor(k).float()
    raise KeyError(f"no text embed_tokens.weight in {target_dir}")


def weight_problems(draft_dir) -> list[str]:
    """Tensors of ``draft_dir/model.safetensors`` whose shape is not what its ``config.json``
    implies (a damaged or hand-edited draft), as ``name: file [..], config [..]``. Reads the
    file's header only; the model is built on the meta device."""
    from safetensors import safe_open

    draft_dir = Path(draft_dir)
    cfg = SparrowDraftConfig.from_dir(draft_dir)
    with torch.device("meta"):
        want = {k: list(v.shape) for k, v in SparrowDraftModel(cfg).state_dict().items()}
    weights = draft_dir / WEIGHTS
    if not weights.is_file():
        return [f"{weights} is missing"]
    problems = []
    with safe_open(str(weights), "pt") as f:
        for name in f.keys():
            shape = list(f.get_slice(name).get_shape())
            if name in want and shape != want[name]:
                problems.append(f"{name}: file {shape}, config {want[name]}")
    return problems


def load_draft(draft_dir, target_dir=None, embed_tokens: torch.Tensor | None = None,
               dtype=torch.float32) -> SparrowDraftModel:
    """The torch draft of ``draft_dir`` (fp32 by default), eval mode, with the target's
    embedding from ``embed_tokens`` or ``target_dir`` (zeros if neither)."""
    from safetensors.torch import load_file

    draft_dir = Path(draft_dir)
    cfg = SparrowDraftConfig.from_dir(draft_dir)
    if embed_tokens is None and target_dir is not None:
        embed_tokens = load_target_embedding(target_dir)
    if embed_tokens is not None and tuple(embed_tokens.shape) != (cfg.target_vocab_size, cfg.hidden_size):
        raise ValueError(f"target embedding is {tuple(embed_tokens.shape)} but the draft expects "
                         f"[target_vocab_size={cfg.target_vocab_size}, hidden_size={cfg.hidden_size}]: "
                         "wrong --target for this draft?")
    model = SparrowDraftModel(cfg, embed_tokens)
    weights = draft_dir / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(
        {k: (v if k in ("d2t", "t2d") else v.float()) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k in ("d2t", "t2d") and not cfg.has_vocab_map)]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()
