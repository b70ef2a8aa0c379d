"""Config, tokenizer and processor of the embedded Qwen2.5-VL target.

The text stack is SmolLM2-135M-Instruct mapped exactly onto Qwen2.5-VL's (Qwen2) decoder:
q/k/v biases are zero, and mRoPE with equal t/h/w position components on text tokens is
plain 1-D RoPE, so text-only logits equal SmolLM2's. A small vision tower + merger (trained
on SparrowWorld, committed under ``assets/``) maps 28x28x2 pixel cubes to LM embeddings.
"""

from __future__ import annotations

# Frames are 112x112 (multiples of 28): 4x4 merged tokens per 2-frame temporal patch.
FRAME_SIZE = 112
# SparrowWorld videos are 24 fps: transformers' Qwen2.5-VL processor assumes 24 fps for raw
# frames without metadata, which is how the target was trained (2-frame temporal patches =
# 1/12 s each, so mRoPE's temporal index advances once per 12 patches). vLLM gets the same
# through the metadata we attach (prompt.video_metadata) or the fps of an mp4 file.
VIDEO_FPS = 24.0

# What train-target's perception heads label (target/perception.py): each merged token; each
# object's pooled tokens (identity, colour); the same and which way the object moves within the
# patch. Here, not in train_vision, so the CLI lists them without importing torch.
PERCEPTION_LEVELS = ("token", "object", "object-motion")

VISION_TOKENS = {
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
}

VISION_CONFIG = dict(
    depth=4,
    hidden_size=128,
    intermediate_size=256,
    num_heads=4,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    # One mRoPE temporal step per second of video (24 frames): a 25k-token video spans ~130.
    tokens_per_second=1,
    window_size=112,
    fullatt_block_indexes=[3],
    out_hidden_size=576,
    hidden_act="silu",
)

# The LM saw 8k tokens in training. Video tokens share compressed mRoPE positions (one
# temporal step per 12 temporal patches here), so a 25k-visual-token request stays far below
# 8k *positions*; vLLM sizes max_model_len in *tokens* from this field, hence 32k.
MAX_TOKENS = 32768

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2's ChatML template, extended with Qwen2-VL's multimodal content parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'video' or 'video' in content or 'video_url' in content -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content -%}{{ content['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def extend_tokenizer(tokenizer):
    """Add the four vision special tokens; returns their ids by role."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS.values())})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.image_token = VISION_TOKENS["image_pad"]
    tokenizer.video_token = VISION_TOKENS["video_pad"]
    return {role: tokenizer.convert_tokens_to_ids(tok) for role, tok in VISION_TOKENS.items()}


def make_config(llama_config, token_ids: dict, vocab_size: int):
    """Qwen2_5_VLConfig whose text stack is ``llama_config`` (SmolLM2)."""
    from transformers import Qwen2_5_VLConfig

    lc = llama_config
    head_dim = lc.hidden_size // lc.num_attention_heads
    half = head_dim // 2
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=lc.hidden_size,
        intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_hidden_layers,
        num_attention_heads=lc.num_attention_heads,
        num_key_value_heads=lc.num_key_value_heads,
        hidden_act=lc.hidden_act,
        max_position_embeddings=MAX_TOKENS,
        rms_norm_eps=lc.rms_norm_eps,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": lc.rope_parameters["rope_theta"],
            # t/h/w split of the 32 rotary frequency pairs (Qwen2.5-VL uses 16/24/24 of 64).
            "mrope_section": [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8],
        },
        tie_word_embeddings=True,
        bos_token_id=lc.bos_token_id,
        eos_token_id=lc.eos_token_id,
        pad_token_id=lc.pad_token_id,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(VISION_CONFIG),
        image_token_id=token_ids["image_pad"],
        video_token_id=token_ids["video_pad"],
        vision_start_token_id=token_ids["vision_start"],
        vision_end_token_id=token_ids["vision_end"],
        tie_word_embeddings=True,
        bos_token_id=lc.bos_token_id,
        eos_token_id=lc.eos_token_id,
        pad_token_id=lc.pad_token_id,
    )


def make_processor(tokenizer):
    """Qwen2.5-VL processor sized for SparrowWorld's 112x112 frames (no resizing)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = FRAME_SIZE * FRAME_SIZE
    size = {"shortest_edge": pixels, "longest_edge": 64 * pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(
        size=size, patch_size=14, merge_size=2, temporal_patch_size=2,
        do_sample_frames=False, fps=VIDEO_FPS, min_frames=2, max_frames=1 << 16,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, video_processor=video_processor,
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )
