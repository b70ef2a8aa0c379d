"""What Sparrow needs to know about a Video LLM family: one adapter per family.

Everything family-specific lives in a ``FamilyAdapter`` subclass (``qwen2_5_vl.py``,
``llava_onevision.py``); the data pipeline, training, evaluation, serving and benchmarks ask
the adapter and nothing else. A new family needs: its HF architecture name, how its
processor turns (video, question) into inputs, which token ids are visual placeholders
(text positions are all the others), its text config (layers, hidden size), the 1-D
position vLLM gives an EAGLE-3 draft at each token, and (in ``vllm_compat.py``, where every
vLLM patch lives) a patch if its vLLM model class does not expose EAGLE-3 auxiliary hidden
states.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Context tokens a served video leaves to the text (system prompt, question, answer, turns):
# a family's serving defaults size a video up to ``max_model_len - TEXT_RESERVE``.
TEXT_RESERVE = 1024


class UnsupportedFamilyError(ValueError):
    """A target whose architecture has no adapter (the message lists the supported ones)."""


class FamilyAdapter:
    name: str = ""  # CLI name: ``sparrow build-target --arch NAME``
    architectures: tuple[str, ...] = ()  # HF / vLLM architecture names it serves
    embedded_target: str = ""  # name of our embedded small target of this family
    # Video tokens share compressed positions (mRoPE: a 25k-token video spans a few hundred), so
    # a long video leaves the text near its trained positions; else every token has its own.
    compressed_video_positions: bool = False

    # ---- model structure (HF config) ---------------------------------------------------
    def text_config(self, config):
        return config.text_config

    def visual_token_ids(self, config) -> tuple[int, ...]:
        """Placeholder ids whose positions hold visual embeddings (never draft positions)."""
        ids = (getattr(config, "video_token_id", None), getattr(config, "image_token_id", None))
        return tuple(int(i) for i in ids if i is not None and i >= 0)

    def is_text(self, config, input_ids: torch.Tensor) -> torch.Tensor:
        """``[T]`` bool: text positions of ``input_ids [T]``."""
        out = torch.ones_like(input_ids, dtype=torch.bool)
        for i in self.visual_token_ids(config):
            out &= input_ids != i
        return out

    # ---- transformers -------------------------------------------------------------------
    def load_hf(self, target_dir, dtype=torch.float32):
        """The target in transformers, eval mode, computing what vLLM computes."""
        raise NotImplementedError

    def load_processor(self, target_dir):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(target_dir))

    def before_generate(self, model) -> None:
        """Reset per-request state a previous ``generate`` left on the model."""

    def hf_inputs(self, processor, frames, question: str, answer: str | None = None, history=(),
                  video_turns=(0,)):
        """Model inputs of one video question (after ``history``'s turns; ``frames`` one video or
        one per turn in ``video_turns``); with ``answer`` also ``labels`` (-100 outside the answer)."""
        raise NotImplementedError

    def position_ids(self, model, inputs) -> torch.Tensor:
        """The position ids the HF model computes for ``inputs`` (one sequence), last dim the
        sequence: ``[1, T]`` plain positions unless the target uses mRoPE."""
        return torch.arange(inputs["input_ids"].shape[1])[None]

    def draft_positions(self, model, input_ids: torch.Tensor, inputs) -> torch.Tensor:
        """``[T]`` the 1-D position vLLM hands an EAGLE-3 draft at each token of
        ``input_ids [T]`` (plain positions unless the target uses mRoPE)."""
        return torch.arange(len(input_ids))

    def eos_token_ids(self, tokenizer) -> list[int]:
        return [tokenizer.convert_tokens_to_ids("<|im_end|>")]

    # ---- vLLM ---------------------------------------------------------------------------
    def prompt_text(self, processor, question: str, history=(), video_turns=(0,)) -> str:
        """The chat prompt of ``question`` after ``history``'s ``(question, answer)`` turns
        (a video with each user turn in ``video_turns``)."""
        raise NotImplementedError

    def vllm_prompt(self, processor, frames, question: str, history=(), video_turns=(0,)) -> dict:
        """An offline ``LLM.generate`` prompt for a video question (see :meth:`prompt_text`)."""
        raise NotImplementedError

    def video_placeholder(self) -> str:
        """The text the chat template puts where the video goes (for text-only prompts)."""
        raise NotImplementedError

    def video_end_token(self) -> str:
        """The token that ends a video's block in the prompt ids, before and after the processor
        expands the placeholder (its last occurrence, where the placeholder is repeated)."""
        raise NotImplementedError

    # ---- serving defaults -------------------------------------------------------------
    def serving_defaults(self, hf_config, max_model_len: int) -> tuple[dict, int | None]:
        """What a Sparrow engine of this family gets where vLLM 0.32's defaults would not serve
        a long video and the user set nothing: (``--media-io-kwargs`` video keys, a floor for
        ``--max-num-batched-tokens``, from which vLLM sizes its encoder cache; None: none)."""
        return {}, None

    def long_video_flags(self, max_model_len: int, model=None) -> dict | None:
        """Engine arguments (``media_io_kwargs``, ``max_num_batched_tokens``) a user needs where
        vLLM 0.32 reads fewer frames of a video file than the target's processor keeps and the
        family has no serving default for it; a Sparrow engine names them at start-up. None:
        nothing needed."""
        return None

    def every_frame_media_io(self) -> dict:
        """``--media-io-kwargs`` video keys under which vLLM's video-file loader keeps every
        frame of a file (for servers of any method, e.g. a benchmark's; a Sparrow engine gets
        :meth:`serving_defaults`)."""
        return {}

    # ---- videos -------------------------------------------------------------------------
    def visual_tokens(self, num_frames: int, height: int = 112, width: int = 112) -> int:
        """LM tokens the target makes of a ``[num_frames, height, width]`` video."""
        raise NotImplementedError

    def frames_for_visual_tokens(self, tokens: int, height: int = 112, width: int = 112) -> int:
        """Fewest frames (even) reaching ``tokens`` visual tokens."""
        per_two = self.visual_tokens(2, height, width)
        f = 2 * max(1, -(-tokens // per_two))
        while f > 2 and self.visual_tokens(f - 2, height, width) >= tokens:
            f -= 2
        return f

    # ---- the embedded target of this family ---------------------------------------------
    def build_model(self, vision_parts: dict[str, torch.Tensor] | None = None, seed: int = 0):
        """``(model, tokenizer, processor)``: SmolLM2 + vision parts (``None``: seeded random
        tower, the start of training), fp32, eval mode."""
        raise NotImplementedError

    def vision_module(self, model) -> torch.nn.Module:
        """What vision training updates (tower + projector); the LM stays frozen (or gets a LoRA,
        ``target/lora.py``)."""
        raise NotImplementedError

    def vision_parts_of(self, model) -> dict[str, torch.Tensor]:
        """The trained parts to commit under ``assets/<embedded_target>/``."""
        raise NotImplementedError

    # What ``target/perception.py`` labels: one visual token per (frames_per_token frames, 28 px
    # row, 28 px column) of the embedded target's 112 px frames.
    frames_per_token: int = 1

    def video_tokens(self, model, inputs) -> torch.Tensor:
        """``[N, hidden]``: the LM embeddings the vision parts make of ``inputs``' one video, in
        the order of ``target/perception.py``'s labels (separators left out); a tower-only forward."""
        raise NotImplementedError

    def capture_video_tokens(self, model, sink: list):
        """A forward hook that puts :meth:`video_tokens`' tensor of each video the model embeds
        in ``sink[0]`` (what the LM reads, in the graph of its loss); returns the hook's handle."""
        raise NotImplementedError

    def build_target(self, out_dir: Path | None = None, force: bool = False,
                     vision_parts: Path | None = None) -> Path:
        raise NotImplementedError

    def vision_parts_path(self) -> Path:
        """Where the committed vision parts of the embedded target live."""
        raise NotImplementedError
