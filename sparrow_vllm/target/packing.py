"""Several questions about one clip in one training forward (any family, through its adapter).

An LM step of the target's training costs one forward and backward of the 135M LM over the
clip's visual tokens plus one question; the answer's few fact words are all it learns from.
Packing puts the other questions the clip can answer after the first one, each in its own
block: a block attends to the shared prefix (system prompt and video) and to itself only, and
its positions restart where the first question's do. Each block then sees exactly what the
single-turn prompt of its question sees (no answer can read another's), so the packed loss is
the loss of the separate samples; the video is encoded and read once for all of them.
"""

from __future__ import annotations

import numpy as np
import torch

from sparrow_vllm.target.prompt import answer_ids, append_tokens
from sparrow_vllm.world.qa import QUESTION_KINDS, make_qa


def clip_questions(sample, n: int) -> list[tuple[str, str]]:
    """Up to ``n - 1`` more (question, answer) pairs about ``sample``'s scene, one per other
    question kind the scene can answer, in a seeded random order (the same for a sample)."""
    rng = np.random.default_rng([sample.seed, 7])
    kinds = [k for k in QUESTION_KINDS if k != sample.kind]
    qas = [(qa.question, qa.answer) for k in kinds if (qa := make_qa(sample.scene, k, rng)) is not None]
    order = rng.permutation(len(qas))
    return [qas[i] for i in order[:max(0, n - 1)]]


def _suffix_ids(adapter, processor, question: str) -> list[int]:
    """The prompt's tokens after the video (the question and the assistant's turn header)."""
    ids = processor.tokenizer(adapter.prompt_text(processor, question), add_special_tokens=False)["input_ids"]
    end = processor.tokenizer.convert_tokens_to_ids(adapter.video_end_token())
    if ids.count(end) != 1:
        raise ValueError(f"expected one {adapter.video_end_token()} in the prompt of {question!r}")
    return ids[ids.index(end) + 1:]


def pack_questions(adapter, model, processor, inputs, qas: list[tuple[str, str]]):
    """``(inputs, position_ids [..., L], blocks [L])``: ``inputs`` of one clip and its first
    question with ``labels`` (``adapter.hf_inputs``), extended by a block per pair of ``qas``.
    ``blocks`` is 0 on the shared prefix, ``j`` on the ``j``-th question's block; the attention
    must let a block see the prefix and itself only (``train_vision.long_video_attention``)."""
    tokenizer = processor.tokenizer
    ids, labels = inputs["input_ids"][0], inputs["labels"][0]
    end = tokenizer.convert_tokens_to_ids(adapter.video_end_token())
    prefix = int((ids == end).nonzero()[-1]) + 1
    position_ids = adapter.position_ids(model, inputs)
    first = position_ids[..., prefix:prefix + 1]  # text after the video (mRoPE: three equal components)
    all_ids, all_labels, all_pos = [ids], [labels], [position_ids]
    blocks = [torch.zeros(prefix, dtype=torch.long), torch.ones(len(ids) - prefix, dtype=torch.long)]
    for j, (question, answer) in enumerate(qas, 2):
        asked = torch.tensor(_suffix_ids(adapter, processor, question))
        said = answer_ids(tokenizer, answer)[0]
        n = len(asked) + len(said)
        all_ids.append(torch.cat([asked, said]))
        all_labels.append(torch.cat([torch.full_like(asked, -100), said]))
        all_pos.append(first + torch.arange(n))
        blocks.append(torch.full((n,), j, dtype=torch.long))
    packed = append_tokens(dict(inputs), torch.cat(all_ids)[len(ids):][None])  # the blocks after the first
    packed["labels"] = torch.cat(all_labels)[None]
    return packed, torch.cat(all_pos, -1), torch.cat(blocks)
