"""LLaVA-OneVision: ``<video>`` placeholders, plain 1-D positions, SigLIP tower + projector +
``image_newline``; a video is 2x2-pooled patches of every frame plus one newline.

The embedded target of this family is ``sparrow_vllm/target/llava_onevision.py`` (SmolLM2 +
a small SigLIP tower). vLLM 0.32 serves ``LlavaOnevisionForConditionalGeneration``
unmodified; its EAGLE-3 hidden-state capture and a mixed-video-length fix are patches 6 and 7
in ``sparrow_vllm/serving/vllm_compat.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparrow_vllm.families.base import TEXT_RESERVE, FamilyAdapter


class LlavaOneVisionAdapter(FamilyAdapter):
    name = "llava-onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    embedded_target = "sparrow-llavaov-smollm2"

    # ---- transformers -------------------------------------------------------------------
    def load_hf(self, target_dir, dtype=torch.float32):
        from sparrow_vllm.target.llava_onevision import load_hf_target

        return load_hf_target(target_dir, dtype)

    def hf_inputs(self, processor, frames, question: str, answer: str | None = None, history=(),
                  video_turns=(0,)):
        from sparrow_vllm.target.llava_onevision import hf_inputs

        return hf_inputs(processor, frames, question, answer, history, video_turns)

    # draft_positions: the base's plain arange (LLaVA-OV has no mRoPE; vLLM gives every
    # token, visual ones included, its index).

    # ---- vLLM ---------------------------------------------------------------------------
    def prompt_text(self, processor, question: str, history=(), video_turns=(0,)) -> str:
        from sparrow_vllm.target.llava_onevision import prompt_text

        return prompt_text(processor, question, history, video_turns)

    def vllm_prompt(self, processor, frames, question: str, history=(), video_turns=(0,)) -> dict:
        from sparrow_vllm.target.llava_onevision import vllm_prompt

        return vllm_prompt(processor, frames, question, history, video_turns)

    def video_placeholder(self) -> str:
        from sparrow_vllm.target.llava_onevision import VIDEO_PLACEHOLDER

        return VIDEO_PLACEHOLDER  # "<video>\n"

    def video_end_token(self) -> str:
        from sparrow_vllm.target.llava_onevision import VIDEO_TOKEN

        return VIDEO_TOKEN  # expanded to the video's tokens (its newline included): the last one ends it

    # ---- serving defaults -------------------------------------------------------------
    def serving_defaults(self, hf_config, max_model_len: int) -> tuple[dict, int | None]:
        """vLLM 0.32 keeps 32 frames of a LLaVA-OV video file (a ~6k-token video at 7B size)
        and profiles its encoder cache with 16, so longer videos are cut or refused (400).
        Here: every frame up to what the context holds (text keeps ``TEXT_RESERVE`` tokens),
        and an encoder cache for a video that long."""
        v = hf_config.vision_config
        stride = getattr(hf_config, "spatial_pool_stride", 2)  # vLLM pools each frame's patch grid
        side = -(-(v.image_size // v.patch_size) // stride)
        per_frame = side * side
        frames = max(1, (max_model_len - TEXT_RESERVE - 1) // per_frame)
        return {"num_frames": frames}, frames * per_frame + 1

    def every_frame_media_io(self) -> dict:
        """vLLM 0.32 keeps 32 evenly spaced frames of a LLaVA-OV video file; -1: every frame."""
        return {"num_frames": -1}

    # ---- videos -------------------------------------------------------------------------
    def visual_tokens(self, num_frames: int, height: int = 112, width: int = 112) -> int:
        from sparrow_vllm.target.llava_onevision import visual_tokens

        return visual_tokens(num_frames, height, width)

    # ---- the embedded target ------------------------------------------------------------
    def build_model(self, vision_parts: dict[str, torch.Tensor] | None = None, seed: int = 0):
        from sparrow_vllm.target.llava_onevision import build_model

        return build_model(vision_parts, seed=seed)

    def vision_module(self, model) -> torch.nn.Module:
        """Tower + projector + ``image_newline`` (a view sharing the model's parameters)."""
        from sparrow_vllm.target.llava_onevision import vision_module

        return vision_module(model)

    def vision_parts_of(self, model) -> dict[str, torch.Tensor]:
        from sparrow_vllm.target.llava_onevision import vision_parts_of

        return vision_parts_of(model)

    # frames_per_token: the base's 1 (each frame's 8x8 patches pooled 2x2 to 4x4 tokens)

    def video_tokens(self, model, inputs) -> torch.Tensor:
        """Every frame's 16 tokens, the video's closing ``image_newline`` left out."""
        feats = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output
        return feats[:, :-1].reshape(-1, feats.shape[-1])

    def capture_video_tokens(self, model, sink: list):
        """On the projector: its output per frame, pooled as the model pools it (images too go
        through the projector; the vision training clips are videos)."""
        inner = model.model

        def hook(module, args, out):
            sink[0] = inner.apply_pooling(out).reshape(-1, out.shape[-1])

        return inner.multi_modal_projector.register_forward_hook(hook)

    def build_target(self, out_dir: Path | None = None, force: bool = False,
                     vision_parts: Path | None = None) -> Path:
        from sparrow_vllm.target.llava_onevision import build_target

        return build_target(out_dir, force=force, vision_parts_path=vision_parts)

    def vision_parts_path(self) -> Path:
        from sparrow_vllm.target.llava_onevision import ASSETS_DIR, VISION_PARTS

        return ASSETS_DIR / VISION_PARTS

