"""One way to turn (video, question) into model inputs, shared by training, eval and serving."""

from __future__ import annotations

import numpy as np

from sparrow_vllm.target.config import VIDEO_FPS


def messages(question: str, answer: str | None = None, history=()) -> list[dict]:
    """A chat over one video: ``history`` holds the earlier ``(question, answer)`` turns; the
    video comes with the first question."""
    turns = [*history, (question, answer)]
    msgs = []
    for i, (q, a) in enumerate(turns):
        content = [{"type": "video"}, {"type": "text", "text": q}] if i == 0 else [{"type": "text", "text": q}]
        msgs.append({"role": "user", "content": content})
        if a is not None and i < len(turns) - 1:
            msgs.append({"role": "assistant", "content": a})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def prompt_text(processor, question: str, history=()) -> str:
    return processor.apply_chat_template(messages(question, history=history), add_generation_prompt=True,
                                         tokenize=False)


def video_metadata(num_frames: int) -> dict:
    """What vLLM's Qwen2.5-VL processing needs next to raw frames (all frames are used)."""
    return {
        "fps": VIDEO_FPS,
        "duration": num_frames / VIDEO_FPS,
        "total_num_frames": num_frames,
        "frames_indices": list(range(num_frames)),
        "video_backend": "numpy",
        "do_sample_frames": False,
    }


def hf_inputs(processor, frames: np.ndarray, question: str, answer: str | None = None):
    """Tokenized HF inputs; with ``answer`` also ``labels`` (-100 outside the answer).

    The answer is tokenized on its own and appended, exactly as generation produces it.
    """
    inputs = processor(
        text=[prompt_text(processor, question)], videos=[frames], return_tensors="pt",
        videos_kwargs={"do_sample_frames": False, "fps": VIDEO_FPS},
    )
    # Keep `mm_token_type_ids`: without it transformers 5 silently gives video tokens plain
    # 1-D positions instead of Qwen2.5-VL's mRoPE (what vLLM computes).
    return append_answer(inputs, processor.tokenizer, answer)


def append_answer(inputs, tokenizer, answer: str | None):
    """With ``answer``: append its tokens (+ ``<|im_end|>``) to the prompt's and add ``labels``
    (-100 on the prompt). The answer is tokenized on its own, exactly as generation produces it."""
    import torch

    if answer is None:
        return inputs
    ids = answer_ids(tokenizer, answer)
    prompt_ids = inputs["input_ids"]
    inputs = append_tokens(inputs, ids)
    inputs["labels"] = torch.cat([torch.full_like(prompt_ids, -100), ids], 1)
    return inputs


def answer_ids(tokenizer, answer: str):
    """``[1, n]`` token ids of an answer and its ``<|im_end|>``, tokenized on its own, exactly as
    generation produces it."""
    return tokenizer(answer + "<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"]


def append_tokens(inputs, ids):
    """``inputs`` with text token ids ``[1, n]`` appended (ids, attention mask and, where
    present, the per-token modality); modified in place and returned."""
    import torch

    ids = ids.to(inputs["input_ids"].device)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    return inputs


def vllm_prompt(processor, frames: np.ndarray, question: str, history=()) -> dict:
    """An offline ``LLM.generate`` prompt for a video question (after ``history``'s turns)."""
    return {
        "prompt": prompt_text(processor, question, history),
        "multi_modal_data": {"video": (frames, video_metadata(len(frames)))},
    }
