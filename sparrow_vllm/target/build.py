"""Assemble the embedded target: SmolLM2 text stack + committed vision parts -> HF checkpoint."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from sparrow_vllm.target.config import extend_tokenizer, make_config, make_processor
from sparrow_vllm.target.lora import merge_lora
from sparrow_vllm.target.mrope import use_vllm_positions
from sparrow_vllm.target.paths import ASSETS_DIR, TARGET_NAME, default_target_dir
from sparrow_vllm.target.smollm2 import lm_state_with_new_rows, load_smollm2

VISION_PARTS = "vision_parts.safetensors"
# Trainable parts beyond the vision tower: the rows of the new special tokens.
NEW_ROWS_KEY = "new_token_embeddings"


def build_model(vision_parts: dict[str, torch.Tensor] | None = None, seed: int = 0):
    """Returns ``(model, tokenizer, processor)`` in fp32, eval mode.

    ``vision_parts``: ``visual.*`` tensors and ``new_token_embeddings [4, hidden]``, and
    optionally ``lora.*`` factors, merged into the LM (``target/lora.py``); ``None`` leaves the
    vision tower at its seeded random init (the start of training).
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    llama, tokenizer = load_smollm2()
    token_ids = extend_tokenizer(tokenizer)
    config = make_config(llama.config, token_ids, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float().eval()

    lm_state = lm_state_with_new_rows(llama, len(tokenizer), (vision_parts or {}).get(NEW_ROWS_KEY))
    lm_state = merge_lora(lm_state, vision_parts)
    lm = model.model.language_model
    missing, unexpected = lm.load_state_dict(lm_state, strict=False)
    # Qwen2 has q/k/v biases, Llama none: exact mapping means zero biases.
    bias_keys = {k for k in missing if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    if set(missing) - bias_keys or unexpected:
        raise RuntimeError(f"SmolLM2 -> Qwen2.5-VL mapping mismatch: {missing=}, {unexpected=}")
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name in bias_keys:
                p.zero_()
    if vision_parts is not None:
        visual = {k[len("visual."):]: v for k, v in vision_parts.items() if k.startswith("visual.")}
        model.model.visual.load_state_dict(visual, strict=True)
    model.tie_weights()
    return use_vllm_positions(model), tokenizer, make_processor(tokenizer)


def load_hf_target(target_dir, dtype=torch.float32):
    """A Qwen2.5-VL target checkpoint in transformers, eval mode, computing vLLM's mRoPE
    positions (see ``target/mrope.py``): what every transformers path of ours must use."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(target_dir), dtype=dtype)
    return use_vllm_positions(model.eval())


def vision_parts_of(model) -> dict[str, torch.Tensor]:
    """The trained parts to commit: vision tower + merger, and the new token rows."""
    parts = {f"visual.{k}": v.detach().clone().contiguous() for k, v in model.model.visual.state_dict().items()}
    embed = model.model.language_model.embed_tokens.weight.detach()
    parts[NEW_ROWS_KEY] = embed[-4:].clone().contiguous()
    return parts


def load_vision_parts(path: Path | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = path or ASSETS_DIR / VISION_PARTS
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: train it with `sparrow train-target` (see README)."
        )
    return {k: v.float() for k, v in load_file(str(path)).items()}  # stored fp32 or fp16


BUILDER_VERSION = 2  # bump when the assembly itself changes


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_target(out_dir: Path | None = None, force: bool = False, vision_parts_path: Path | None = None) -> Path:
    """Write the full HF checkpoint (config, tokenizer, processor, safetensors) to ``out_dir``.

    Deterministic; idempotent (a complete directory is reused unless ``force``).
    """
    parts_path = vision_parts_path or ASSETS_DIR / VISION_PARTS
    stamp = {"name": TARGET_NAME, "builder": BUILDER_VERSION,
             "vision_parts_sha256": file_sha256(parts_path) if parts_path.exists() else None}
    return write_checkpoint(Path(out_dir or default_target_dir()), stamp, force,
                            lambda: build_model(load_vision_parts(parts_path)))


def write_checkpoint(out_dir: Path, stamp: dict, force: bool, build, after_save=None) -> Path:
    """The assembly step both embedded targets share: reuse ``out_dir`` if its stamp file
    equals ``stamp`` (unless ``force``), else ``build() -> (model, tokenizer, processor)``,
    save into a temp directory next to it (``after_save(tmp)`` may rewrite files there) and
    rename it into place, so an interrupted build never leaves a half directory behind."""
    marker = out_dir / "sparrow_target.json"
    if not force and marker.exists() and json.loads(marker.read_text()) == stamp:
        return out_dir
    model, tokenizer, processor = build()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    if after_save is not None:
        after_save(tmp)
    processor.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "sparrow_target.json").write_text(json.dumps(stamp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
