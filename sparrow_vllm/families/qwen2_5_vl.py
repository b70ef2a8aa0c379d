"""Qwen2.5-VL: mRoPE positions, ``<|video_pad|>`` placeholders, ``model.model.visual``.

The embedded target of this family is ``sparrow_vllm/target/`` (SmolLM2 + a small Qwen2.5-VL
vision tower); real checkpoints (Qwen2.5-VL-7B-Instruct) use the same adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparrow_vllm.families.base import TEXT_RESERVE, FamilyAdapter


# Frames vLLM 0.32's Qwen2-VL video-file loader keeps at most (Qwen2VLVideoBackend._MAX_FRAMES).
LOADER_MAX_FRAMES = 768


def _video_processor_config(model) -> dict:
    """The video processor's settings in a local target dir (``processor_config.json``'s
    ``video_processor``, or ``video_preprocessor_config.json``); {} elsewhere (a hub id)."""
    import json

    d = Path(str(model)) if model else None
    if d is None or not d.is_dir():
        return {}
    if (d / "processor_config.json").is_file():
        vp = json.loads((d / "processor_config.json").read_text()).get("video_processor")
        if isinstance(vp, dict):
            return vp
    if (d / "video_preprocessor_config.json").is_file():
        return json.loads((d / "video_preprocessor_config.json").read_text())
    return {}


class Qwen25VLAdapter(FamilyAdapter):
    name = "qwen2.5-vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    embedded_target = "sparrow-qwen25vl-smollm2"
    compressed_video_positions = True

    def load_hf(self, target_dir, dtype=torch.float32):
        from sparrow_vllm.target.build import load_hf_target

        return load_hf_target(target_dir, dtype)

    def before_generate(self, model) -> None:
        # transformers caches the mRoPE offset of the last request on the model.
        model.model.rope_deltas = None

    def hf_inputs(self, processor, frames, question: str, answer: str | None = None, history=(),
                  video_turns=(0,)):
        from sparrow_vllm.target.prompt import hf_inputs

        return hf_inputs(processor, frames, question, answer, history, video_turns)

    def position_ids(self, model, inputs) -> torch.Tensor:
        """``[3, 1, T]`` mRoPE positions (temporal, height, width)."""
        pos, _ = model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs.get("second_per_grid_ts"), attention_mask=inputs["attention_mask"])
        return pos

    def draft_positions(self, model, input_ids: torch.Tensor, inputs) -> torch.Tensor:
        """The temporal mRoPE component, with vLLM's video timing: what vLLM's EAGLE-3
        proposer gives a 1-D draft on an mRoPE target."""
        from sparrow_vllm.target.config import VIDEO_FPS

        cfg = model.config
        mm = torch.zeros_like(input_ids)[None]
        mm[0, input_ids == cfg.video_token_id] = 2
        mm[0, input_ids == cfg.image_token_id] = 1
        grid = inputs["video_grid_thw"].cpu()
        sec = torch.tensor([cfg.vision_config.temporal_patch_size / VIDEO_FPS] * len(grid))
        pos, _ = model.model.get_rope_index(input_ids[None], mm, video_grid_thw=grid, second_per_grid_ts=sec)
        return pos[0, 0]

    def prompt_text(self, processor, question: str, history=(), video_turns=(0,)) -> str:
        from sparrow_vllm.target.prompt import prompt_text

        return prompt_text(processor, question, history, video_turns)

    def vllm_prompt(self, processor, frames, question: str, history=(), video_turns=(0,)) -> dict:
        from sparrow_vllm.target.prompt import vllm_prompt

        return vllm_prompt(processor, frames, question, history, video_turns)

    def long_video_flags(self, max_model_len: int, model=None) -> dict | None:
        """Where the video processor keeps more frames than vLLM 0.32's Qwen2-VL loader (768 at
        2 fps; the embedded target's keeps 65,536 at 24 fps): the engine arguments that read a
        file's frames as the processor would, up to a video that fills the context (vLLM sizes
        its encoder cache from ``max_num_batched_tokens``). Not a default: a Sparrow engine must
        read the frames a server without speculation reads. None for real checkpoints (768)."""
        vp = _video_processor_config(model)
        if int(vp.get("max_frames", 0)) <= LOADER_MAX_FRAMES:
            return None
        video = {"fps": float(vp.get("fps", 2.0))} | self.every_frame_media_io()
        return {"media_io_kwargs": {"video": video},
                "max_num_batched_tokens": max(8192, max_model_len - TEXT_RESERVE)}

    def every_frame_media_io(self) -> dict:
        """vLLM 0.32 reads a Qwen2-VL-family video file with its own loader (``qwen2_vl``),
        which keeps at most 768 frames whatever the processor's ``max_frames`` says (6,144
        visual tokens of the embedded target); its uniform loader keeps them all."""
        return {"video_backend": "opencv", "num_frames": -1}

    def video_placeholder(self) -> str:
        return "<|vision_start|><|video_pad|><|vision_end|>"

    def video_end_token(self) -> str:
        return "<|vision_end|>"

    def visual_tokens(self, num_frames: int, height: int = 112, width: int = 112) -> int:
        from sparrow_vllm.world import visual_tokens

        return visual_tokens(num_frames, height, width)

    def frames_for_visual_tokens(self, tokens: int, height: int = 112, width: int = 112) -> int:
        from sparrow_vllm.world import frames_for_visual_tokens

        return frames_for_visual_tokens(tokens, height, width)

    def build_model(self, vision_parts=None, seed: int = 0):
        from sparrow_vllm.target.build import build_model

        return build_model(vision_parts, seed=seed)

    def vision_module(self, model) -> torch.nn.Module:
        return model.model.visual

    def vision_parts_of(self, model) -> dict[str, torch.Tensor]:
        from sparrow_vllm.target.build import vision_parts_of

        return vision_parts_of(model)

    frames_per_token = 2  # the tower's temporal patch

    def video_tokens(self, model, inputs) -> torch.Tensor:
        from sparrow_vllm.target.perception import tower_tokens

        return tower_tokens(model.model.visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"]))

    def capture_video_tokens(self, model, sink: list):
        from sparrow_vllm.target.perception import tower_tokens

        return model.model.visual.register_forward_hook(lambda m, args, out: sink.__setitem__(0, tower_tokens(out)))

    def build_target(self, out_dir: Path | None = None, force: bool = False,
                     vision_parts: Path | None = None) -> Path:
        from sparrow_vllm.target.build import build_target

        return build_target(out_dir, force=force, vision_parts_path=vision_parts)

    def vision_parts_path(self) -> Path:
        from sparrow_vllm.target.build import ASSETS_DIR, VISION_PARTS

        return ASSETS_DIR / VISION_PARTS
