"""The embedded LLaVA-OneVision target: SmolLM2-135M-Instruct + a small SigLIP tower.

``LlavaOnevisionForConditionalGeneration`` whose text config *is* SmolLM2's Llama config
(model_type "llama"), so the LM weights load strictly, unmapped, and text-only logits equal
SmolLM2's. A small SigLIP tower (112x112 frames, 14 px patches -> 8x8 patches) and the
2-layer projector map each frame to 8x8 LM embeddings, which LLaVA-OV pools 2x2
(bilinear) to 4x4 = 16 tokens per frame; one ``image_newline`` embedding closes every
video: ``16 * frames + 1`` tokens (vLLM 0.32 ``get_num_video_tokens`` and transformers
``replace_video_token`` agree; tested). The tower, projector and newline are trained on
SparrowWorld (``sparrow train-target --arch llava-onevision --steps 180 --accum 3 --lr 2e-3``:
20 min on 2 cores, final loss 0.70) and committed under ``assets/sparrow-llavaov-smollm2/``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparrow_vllm.target.lora import merge_lora, without_lora
from sparrow_vllm.target.paths import cache_root
from sparrow_vllm.target.prompt import append_answer, messages, video_list
from sparrow_vllm.target.smollm2 import lm_state_with_new_rows, load_smollm2

TARGET_NAME = "sparrow-llavaov-smollm2"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / TARGET_NAME
VISION_PARTS = "vision_parts.safetensors"
NEW_ROWS_KEY = "new_token_embeddings"  # rows of <image>, <video> (as in target/build.py)
TRAIN_COMMAND = "sparrow train-target --arch llava-onevision --out runs/target-llava"

FRAME_SIZE = 112
PATCH_SIZE = 14
POOL_STRIDE = 2  # LLaVA-OV's fixed 2x2 bilinear pooling of video frames (vLLM + transformers)
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
NEW_TOKENS = (IMAGE_TOKEN, VIDEO_TOKEN)  # appended to SmolLM2's vocabulary in this order
# SigLIP's normalisation (what real LLaVA-OV checkpoints ship); saved in the processor
# config, which both transformers and vLLM (it runs the HF processor of the checkpoint) use.
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]
# anyres for still images, in multiples of the tower's 112 px (videos never use it).
GRID_PINPOINTS = [[112, 112], [112, 224], [224, 112], [224, 224]]

VISION_CONFIG = dict(
    model_type="siglip_vision_model",
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_channels=3,
    image_size=FRAME_SIZE,
    patch_size=PATCH_SIZE,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=False,  # LLaVA-OV uses patch features; vLLM builds no head either
)

# vLLM sizes max_model_len in tokens from max_position_embeddings; 32k admits ~25k+ visual
# tokens (1,600 frames). Unlike the Qwen2.5-VL target (mRoPE compresses video positions),
# LLaVA-OV gives every visual token its own plain 1-D position, and SmolLM2 saw 8k positions
# in training: videos beyond ~500 frames put the text at RoPE positions the LM never saw.
MAX_TOKENS = 32768

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# The placeholder the chat template puts where a video goes (LLaVA's "<video>\n").
VIDEO_PLACEHOLDER = VIDEO_TOKEN + "\n"
IMAGE_PLACEHOLDER = IMAGE_TOKEN + "\n"

# SmolLM2's ChatML template with LLaVA-OV's multimodal content parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'video' or 'video' in content or 'video_url' in content -%}"
    "{{ '" + VIDEO_TOKEN + "\\n' }}"
    "{%- elif content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{%- elif 'text' in content -%}{{ content['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def tokens_per_frame(height: int = FRAME_SIZE, width: int = FRAME_SIZE) -> int:
    """Every frame is resized to the tower's square input, so the size does not matter."""
    grid = FRAME_SIZE // PATCH_SIZE
    pooled = -(-grid // POOL_STRIDE)
    return pooled * pooled


def visual_tokens(num_frames: int, height: int = FRAME_SIZE, width: int = FRAME_SIZE) -> int:
    """LM tokens of one video: 16 per frame + one ``image_newline``."""
    return tokens_per_frame(height, width) * num_frames + 1


# ---- tokenizer, config, processor --------------------------------------------------------

def extend_tokenizer(tokenizer) -> dict[str, int]:
    """Add ``<image>`` and ``<video>`` (in this order) and the chat template."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.image_token = IMAGE_TOKEN
    tokenizer.video_token = VIDEO_TOKEN
    return {"image": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            "video": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)}


def make_config(llama_config, token_ids: dict, vocab_size: int):
    """LlavaOnevisionConfig whose text config is SmolLM2's own Llama config."""
    from transformers import LlavaOnevisionConfig

    lc = llama_config
    text_config = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=lc.hidden_size,
        intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_hidden_layers,
        num_attention_heads=lc.num_attention_heads,
        num_key_value_heads=lc.num_key_value_heads,
        head_dim=lc.head_dim,
        hidden_act=lc.hidden_act,
        max_position_embeddings=MAX_TOKENS,
        rms_norm_eps=lc.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": lc.rope_parameters["rope_theta"]},
        attention_bias=lc.attention_bias,
        mlp_bias=lc.mlp_bias,
        tie_word_embeddings=True,
        bos_token_id=lc.bos_token_id,
        eos_token_id=lc.eos_token_id,
        pad_token_id=lc.pad_token_id,
    )
    return LlavaOnevisionConfig(
        text_config=text_config,
        vision_config=dict(VISION_CONFIG),
        image_token_index=token_ids["image"],
        video_token_index=token_ids["video"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",  # SigLIP has no CLS token
        vision_feature_layer=-1,
        multimodal_projector_bias=True,
        image_grid_pinpoints=[list(p) for p in GRID_PINPOINTS],
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
    )


def make_processor(tokenizer):
    """LLaVA-OV processor sized for SparrowWorld's 112x112 frames (no resizing of them)."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision import (LlavaOnevisionImageProcessor,
                                                     LlavaOnevisionVideoProcessor)

    size = {"height": FRAME_SIZE, "width": FRAME_SIZE}
    image_processor = LlavaOnevisionImageProcessor(
        size=size, image_grid_pinpoints=[list(p) for p in GRID_PINPOINTS],
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
    )
    video_processor = LlavaOnevisionVideoProcessor(
        size=size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD, do_sample_frames=False,
    )
    grid = FRAME_SIZE // PATCH_SIZE
    return LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        num_image_tokens=grid * grid, vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN,
        vision_aspect_ratio="anyres_max_9",
    )


# ---- prompts ----------------------------------------------------------------------------

def prompt_text(processor, question: str, history=(), video_turns=(0,)) -> str:
    return processor.apply_chat_template(messages(question, history=history, video_turns=video_turns),
                                         add_generation_prompt=True, tokenize=False)


def hf_inputs(processor, frames, question: str, answer: str | None = None, history=(), video_turns=(0,)):
    """Tokenized HF inputs; with ``answer`` also ``labels`` (``target/prompt.py`` semantics).
    ``frames``: one video, or a list of one per turn in ``video_turns``, all of one length:
    transformers' LLaVA-OV stacks a prompt's videos into one tensor (vLLM reads any lengths)."""
    videos = video_list(frames)
    lengths = sorted({len(v) for v in videos})
    if len(lengths) > 1:
        raise ValueError(f"llava-onevision in transformers: a prompt's videos must have one length, got {lengths} "
                         "frames (vLLM serves them as they are)")
    inputs = processor(text=[prompt_text(processor, question, history, video_turns)], videos=videos,
                       return_tensors="pt")
    return append_answer(inputs, processor.tokenizer, answer)


def vllm_prompt(processor, frames, question: str, history=(), video_turns=(0,)) -> dict:
    """An offline ``LLM.generate`` prompt: vLLM's LLaVA-OV takes raw ``[T, H, W, 3]`` uint8
    frames, no metadata (every frame is used; LLaVA-OV has no notion of time); ``frames`` as in
    :func:`hf_inputs`.

    vLLM 0.32 limits: its encoder cache is max(max_num_batched_tokens, 302) tokens (it
    profiles at most 16 frames a video), so a video of N tokens needs
    max_num_batched_tokens >= N; and one encoder batch of videos with different frame
    counts fails (3-D embeddings from ``_process_video_pixels``) unless patched."""
    videos = video_list(frames)
    return {"prompt": prompt_text(processor, question, history, video_turns),
            "multi_modal_data": {"video": videos if len(videos) > 1 else videos[0]}}


# ---- the model --------------------------------------------------------------------------

class VisionParts(nn.Module):
    """View of what vision training updates: SigLIP tower, projector, ``image_newline``
    (the model's own modules / parameter, shared, not copies)."""

    def __init__(self, model):
        super().__init__()
        inner = model.model
        self.vision_tower = inner.vision_tower
        self.multi_modal_projector = inner.multi_modal_projector
        self.image_newline = inner.image_newline


def vision_module(model) -> VisionParts:
    return VisionParts(model)


def build_model(vision_parts: dict[str, torch.Tensor] | None = None, seed: int = 0):
    """Returns ``(model, tokenizer, processor)`` in fp32, eval mode.

    ``vision_parts``: :class:`VisionParts` tensors (``vision_tower.*``,
    ``multi_modal_projector.*``, ``image_newline``) and ``new_token_embeddings [2, hidden]``;
    and optionally ``lora.*`` factors merged into the LM (``target/lora.py``); ``None`` leaves
    them at their seeded random init (the start of training).
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    llama, tokenizer = load_smollm2()
    token_ids = extend_tokenizer(tokenizer)
    config = make_config(llama.config, token_ids, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).float().eval()

    lm_state = lm_state_with_new_rows(llama, len(tokenizer), (vision_parts or {}).get(NEW_ROWS_KEY))
    lm_state = merge_lora(lm_state, vision_parts)
    model.model.language_model.load_state_dict(lm_state, strict=True)  # same class: no mapping
    if vision_parts is not None:
        vision = {k: v for k, v in without_lora(vision_parts).items() if k != NEW_ROWS_KEY}
        vision_module(model).load_state_dict(vision, strict=True)
    model.tie_weights()
    return model, tokenizer, make_processor(tokenizer)


def vision_parts_of(model) -> dict[str, torch.Tensor]:
    """The trained parts to commit: tower + projector + newline, and the new token rows."""
    parts = {k: v.detach().clone().contiguous() for k, v in vision_module(model).state_dict().items()}
    embed = model.model.language_model.embed_tokens.weight.detach()
    parts[NEW_ROWS_KEY] = embed[-len(NEW_TOKENS):].clone().contiguous()
    return parts


def load_hf_target(target_dir, dtype=torch.float32):
    """The LLaVA-OV target in transformers, eval mode (plain 1-D positions: what vLLM does)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(str(target_dir), dtype=dtype).eval()


def load_vision_parts(path: Path | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path or ASSETS_DIR / VISION_PARTS)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the LLaVA-OV target's vision parts are not trained yet. Train them "
            f"with `{TRAIN_COMMAND}` and copy runs/target-llava/{VISION_PARTS} to {ASSETS_DIR}/."
        )
    return {k: v.float() for k, v in load_file(str(path)).items()}  # stored fp32 or fp16


BUILDER_VERSION = 1  # bump when the assembly itself changes


def default_target_dir() -> Path:
    return cache_root() / "targets" / TARGET_NAME


def _classic_siglip_keys(path: Path) -> None:
    """transformers 5 saves SigLIP as ``vision_tower.encoder...`` (its flattened module
    layout); vLLM 0.32 (and LLaVA-OV checkpoints on the Hub) expect
    ``vision_tower.vision_model.encoder...``, which transformers also loads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    prefix = "vision_tower."
    renamed = {(prefix + "vision_model." + k[len(prefix):]
                if k.startswith(prefix) and not k.startswith(prefix + "vision_model.") else k): v
               for k, v in state.items()}
    save_file(renamed, str(path), metadata=metadata)


def build_target(out_dir: Path | None = None, force: bool = False, vision_parts_path: Path | None = None) -> Path:
    """Write the full HF checkpoint (config, tokenizer, processor, safetensors) to ``out_dir``
    (default ``cache_root()/targets/sparrow-llavaov-smollm2``).

    Deterministic; idempotent (a complete directory with the same stamp is reused unless
    ``force``). The vision parts come from ``vision_parts_path`` (default: the committed
    ``assets/sparrow-llavaov-smollm2/vision_parts.safetensors``); a missing file raises
    ``FileNotFoundError`` naming the training command.
    """
    from sparrow_vllm.target.build import file_sha256, write_checkpoint

    parts_path = Path(vision_parts_path or ASSETS_DIR / VISION_PARTS)
    parts = load_vision_parts(parts_path)  # raises with the training command
    stamp = {"name": TARGET_NAME, "builder": BUILDER_VERSION, "vision_parts_sha256": file_sha256(parts_path)}
    return write_checkpoint(Path(out_dir or default_target_dir()), stamp, force, lambda: build_model(parts),
                            after_save=lambda tmp: _classic_siglip_keys(tmp / "model.safetensors"))
