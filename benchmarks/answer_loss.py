"""Where a target's answer loss sits: per question kind, the teacher-forced loss and top-1
accuracy on the answer's fact words, against the words copied from the question and the
template (docs/target.md F).

An answer like "The digit 2 moves up." has one fact the video decides ("up"), words the
question already gave ("digit", "2") and template words. Training reports the mean over all
of them; this splits it, on training-distribution clips (train split, seeds apart from any
training run's) and test clips, both at 16 frames (128 visual tokens). Train about equal to test
means the LM stage underfits rather than overfits.

    python benchmarks/answer_loss.py [--vision-parts PATH] [--n 60] [--out JSON]

~2 min for --n 60 on 2 cores (2 x 60 forwards of the full target, LoRA merged).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

# train-split clips no training run draws (train_vision uses indices < 900,000 plus offsets
# for the LM stage, 600,000+ for the perception stage): far from both.
TRAIN_INDEX = 950_000


def measure(vision_parts: Path | None, n: int, frames: int = 16) -> dict:
    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.build import ASSETS_DIR, VISION_PARTS, file_sha256, load_vision_parts
    from sparrow_vllm.world import make_sample
    from sparrow_vllm.world.qa import VOCABULARY

    adapter = get_family("qwen2.5-vl")
    vision_parts = Path(vision_parts or ASSETS_DIR / VISION_PARTS)
    model, tokenizer, processor = adapter.build_model(load_vision_parts(vision_parts))
    out = {"vision_parts": str(vision_parts), "sha256": file_sha256(vision_parts), "n": n, "frames": frames}
    for split, first in (("train", TRAIN_INDEX), ("test", 0)):
        by_kind = collections.defaultdict(lambda: {"fact": [], "copied": [], "template": [], "fact_top1": []})
        for i in range(n):
            s = make_sample(split, first + i, frames)
            inputs = adapter.hf_inputs(processor, s.frames(), s.question, s.answer)
            with torch.no_grad():
                logits = model(**inputs).logits[0, :-1]
            labels = inputs["labels"][0, 1:]
            answer = labels != -100
            logp = torch.log_softmax(logits[answer].float(), -1)
            target = labels[answer]
            nll = -logp.gather(1, target[:, None])[:, 0]
            top1 = logp.argmax(-1) == target
            question = s.question.lower()
            for token, loss, ok in zip(target.tolist(), nll.tolist(), top1.tolist()):
                word = tokenizer.decode([token]).strip().lower()
                role = ("copied" if word in question else "fact") if word in VOCABULARY else "template"
                by_kind[s.kind][role].append(loss)
                if role == "fact":
                    by_kind[s.kind]["fact_top1"].append(float(ok))
        mean = lambda xs: round(sum(xs) / len(xs), 3) if xs else None  # noqa: E731
        out[split] = {kind: {"fact_loss": mean(d["fact"]), "fact_top1": mean(d["fact_top1"]),
                             "copied_loss": mean(d["copied"]), "template_loss": mean(d["template"]),
                             "fact_tokens": len(d["fact"])}
                      for kind, d in sorted(by_kind.items())}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vision-parts", type=Path, default=None, help="default: the committed parts")
    ap.add_argument("--n", type=int, default=60, help="clips per split (test: the first n)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args()
    result = measure(a.vision_parts, a.n)
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    for split in ("train", "test"):
        print(split)
        for kind, r in result[split].items():
            print(f"  {kind:10s} fact loss {r['fact_loss']}  fact top-1 {r['fact_top1']}  "
                  f"copied {r['copied_loss']}  template {r['template_loss']}  ({r['fact_tokens']} fact tokens)")
