"""Which LM heads look, from the answer, at the object the question is about? (docs/target.md F)

For each head of each LM layer, on train-split clips that ask about one object (16 frames): the
attention mass, averaged over the positions that predict an answer token, on the visual tokens
that object covers (``target/grounding.subject_tokens``) and on all visual tokens. Prints the
heads with the most mass on the object; ``--grounding-layer/--grounding-head`` of
``sparrow train-target`` default to the second on docs/target.md E's candidate, layer 19 head 1
(the first is in the last layer, which leaves no layer to use what it reads).

    python benchmarks/subject_attention.py [--vision-parts PATH] [--clips 16] [--top 8]

~1 min for 16 clips on 2 cores (eager attention, the full target, LoRA merged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from answer_loss import TRAIN_INDEX  # the same held-out train clips


def measure(vision_parts: Path | None, clips: int, top: int) -> dict:
    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.build import ASSETS_DIR, VISION_PARTS, file_sha256, load_vision_parts
    from sparrow_vllm.target.grounding import subject_tokens
    from sparrow_vllm.world import make_sample

    adapter = get_family("qwen2.5-vl")
    vision_parts = Path(vision_parts or ASSETS_DIR / VISION_PARTS)
    model, _, processor = adapter.build_model(load_vision_parts(vision_parts))
    model.model.language_model.config._attn_implementation = "eager"  # returns the attention weights
    visual_ids = torch.tensor(adapter.visual_token_ids(model.config))
    on_subject, on_visual, share = [], [], []
    index = TRAIN_INDEX
    while len(on_subject) < clips:
        s = make_sample("train", index, 16)
        index += 1
        subject = subject_tokens(s)
        if subject is None:
            continue
        inputs = adapter.hf_inputs(processor, s.frames(), s.question, s.answer)
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
        is_visual = torch.isin(inputs["input_ids"][0], visual_ids)
        keys = torch.nonzero(is_visual)[:, 0][torch.as_tensor(subject)]
        rows = torch.nonzero(inputs["labels"][0, 1:] != -100)[:, 0]  # position t predicts token t + 1
        weights = torch.stack([a[0][:, rows] for a in attentions])  # [layers, heads, rows, T]
        on_subject.append(weights[..., keys].sum(-1).mean(-1))
        on_visual.append(weights[..., is_visual].sum(-1).mean(-1))
        share.append(len(keys) / int(is_visual.sum()))
    subject_mass, visual_mass = torch.stack(on_subject).mean(0), torch.stack(on_visual).mean(0)
    best = torch.topk(subject_mass.flatten(), top).indices.tolist()
    heads = subject_mass.shape[1]
    return {"vision_parts": str(vision_parts), "sha256": file_sha256(vision_parts), "clips": clips,
            "subject_share_of_visual_tokens": round(sum(share) / len(share), 3),
            "top_heads": [{"layer": i // heads, "head": i % heads,
                           "mass_on_subject": round(float(subject_mass.flatten()[i]), 3),
                           "mass_on_visual": round(float(visual_mass.flatten()[i]), 3)} for i in best]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vision-parts", type=Path, default=None, help="default: the committed parts")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(measure(a.vision_parts, a.clips, a.top), indent=1))
