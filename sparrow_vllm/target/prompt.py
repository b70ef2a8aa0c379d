"""One way to turn (video, question) into model inputs, shared by training, eval and serving."""

from __future__ import annotations

from sparrow_vllm.target.config import VIDEO_FPS


def messages(question: str, answer: str | None = None, history=(), video_turns=(0,)) -> list[dict]:
    """A chat: ``history`` holds the earlier ``(question, answer)`` turns; each user turn whose
    index is in ``video_turns`` brings a video (the first one only, by default)."""
    turns = [*history, (question, answer)]
    msgs = []
    for i, (q, a) in enumerate(turns):
        content = [{"type": "video"}] if i in video_turns else []
        content.append({"type": "text", "text": q})
        msgs.append({"role": "user", "content": content})
        if a is not None and i < len(turns) - 1:
            msgs.append({"role": "assistant", "content": a})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def prompt_text(processor, question: str, history=(), video_turns=(0,)) -> str:
    return processor.apply_chat_template(messages(question, history=history, video_turns=video_turns),
                                         add_generation_prompt=True, tokenize=False)


def long_turn(sample, turn: int) -> dict:
    """What answering turn ``turn`` of a long sample (``world.story.LongSample``) takes: the
    question, the reference answer, the earlier turns with their reference answers, which turns
    bring a video, and those videos (up to this turn) in order."""
    turns = sample.turns[:turn + 1]
    video_turns = tuple(i for i, t in enumerate(turns) if t["clip"] is not None)
    return {"question": turns[-1]["question"], "answer": turns[-1]["answer"],
            "history": [(t["question"], t["answer"]) for t in turns[:-1]],
            "video_turns": video_turns, "videos": sample.clips()[:len(video_turns)]}


def video_list(frames) -> list:
    """One video, or a list of one per video turn (a stream's clips), as a list."""
    return list(frames) if isinstance(frames, (list, tuple)) else [frames]


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


def hf_inputs(processor, frames, question: str, answer: str | None = None, history=(), video_turns=(0,)):
    """Tokenized HF inputs; with ``answer`` also ``labels`` (-100 outside the answer).
    ``frames``: one video, or a list of one per turn in ``video_turns``.

    The answer is tokenized on its own and appended, exactly as generation produces it.
    """
    videos = video_list(frames)
    inputs = processor(
        text=[prompt_text(processor, question, history, video_turns)], videos=videos, return_tensors="pt",
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


def label_earlier_answers(inputs, tokenizer, answers) -> int:
    """Add ``labels`` on the earlier turns' answers of a teacher-forced conversation whose last
    answer ``append_answer`` labelled: one forward then trains every turn (causal attention: a
    turn's logits see only what came before it, as at inference). Each answer is looked up, in
    order, as the token run ``answer_ids`` gives it; one the chat template tokenized otherwise
    is left unlabelled. Returns how many were labelled."""
    ids, labels = inputs["input_ids"][0].tolist(), inputs["labels"][0]
    start, found = 0, 0
    for answer in answers:
        run = answer_ids(tokenizer, answer)[0].tolist()
        at = next((i for i in range(start, len(ids) - len(run) + 1) if ids[i:i + len(run)] == run), None)
        if at is None:
            continue
        labels[at:at + len(run)] = inputs["input_ids"][0, at:at + len(run)]
        start, found = at + len(run), found + 1
    return found


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


def vllm_prompt(processor, frames, question: str, history=(), video_turns=(0,)) -> dict:
    """An offline ``LLM.generate`` prompt for a video question (after ``history``'s turns);
    ``frames`` as in :func:`hf_inputs`."""
    videos = video_list(frames)
    data = [(v, video_metadata(len(v))) for v in videos]
    return {
        "prompt": prompt_text(processor, question, history, video_turns),
        "multi_modal_data": {"video": data if len(data) > 1 else data[0]},
    }
