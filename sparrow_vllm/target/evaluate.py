"""Quality of the embedded target: greedy answers on SparrowWorld, scored against the facts."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sparrow_vllm.families import family_of
from sparrow_vllm.world import make_sample, score_answer


@torch.no_grad()
def generate_answer(model, processor, frames, question: str, max_new_tokens: int = 48) -> str:
    family = family_of(model.config)
    family.before_generate(model)
    inputs = family.hf_inputs(processor, frames, question)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def evaluate(model, processor, split: str = "test", n: int = 100, num_frames: int = 16,
             start_index: int = 0) -> dict:
    """Exact, facts and form accuracy of greedy answers over ``n`` samples of ``split``."""
    rows = []
    t0 = time.time()
    for i in tqdm(range(start_index, start_index + n), desc=f"eval {split} {num_frames}f"):
        s = make_sample(split, i, num_frames)
        answer = generate_answer(model, processor, s.frames(), s.question)
        rows.append(_scored_row(s, answer))
    return _summary(rows, split, n, num_frames, start_index, t0, family_of(model.config))


def kv_cache_gib_for(target, tokens: int, most: int = 4) -> int:
    """Whole GiB of fp32 KV cache for ``tokens`` tokens of ``target``'s LM, at least 1, at most
    ``most``: what the run can use. A fixed 6 GiB stopped vLLM at start-up on a machine whose
    NUMA node had 5.9 GiB free after the model; long videos are scheduled into what there is."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(target).get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 4  # k and v, fp32
    return max(1, min(most, math.ceil(tokens * per_token / 2**30)))


def evaluate_vllm(target, split: str = "test", n: int = 100, num_frames: int = 16,
                  start_index: int = 0, max_num_seqs: int = 16) -> dict:
    """Same as :func:`evaluate`, through vLLM (batched; vLLM and transformers agree, tested)."""
    from sparrow_vllm.offline import run_engine_subprocess, world_prompt_specs

    t0 = time.time()
    family = family_of(target)
    idx = list(range(start_index, start_index + n))
    max_model_len = family.visual_tokens(num_frames) + 512
    run = run_engine_subprocess({
        "target": str(target), "prompts": world_prompt_specs(split, idx, num_frames),
        "sampling": {"max_tokens": 48},
        "engine": {"max_num_seqs": max_num_seqs, "max_model_len": max_model_len},
        "kv_cache_gib": kv_cache_gib_for(target, min(n, max_num_seqs) * max_model_len),
    }, timeout=4 * 3600)
    rows = []
    for i, out in zip(idx, run["outputs"]):
        s = make_sample(split, i, num_frames)
        answer = out["text"].strip()
        rows.append(_scored_row(s, answer))
    summary = _summary(rows, split, n, num_frames, start_index, t0, family)
    stamp = Path(target) / "sparrow_target.json"  # an embedded target's build (which vision parts)
    if stamp.exists():
        summary["target_stamp"] = json.loads(stamp.read_text())
    return summary


def _scored_row(s, answer: str) -> dict:
    return {"id": s.id, "kind": s.kind, "question": s.question, "reference": s.answer,
            "answer": answer, "exact": score_answer(s, answer, "exact"),
            "facts": score_answer(s, answer, "facts"), "form": score_answer(s, answer, "form")}


def _summary(rows, split, n, num_frames, start_index, t0, family) -> dict:
    by_kind: dict[str, list[bool]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["exact"])
    return {
        "family": family.name, "split": split, "n": n, "num_frames": num_frames,
        "visual_tokens": family.visual_tokens(num_frames),
        "exact_accuracy": sum(r["exact"] for r in rows) / n,
        "facts_accuracy": sum(r["facts"] for r in rows) / n,
        "form_accuracy": sum(r["form"] for r in rows) / n,
        "exact_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }


def write_report(results: list[dict], path: Path) -> None:
    """Rows of ``path`` for other (family, split, visual tokens) stay; these replace their own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = lambda r: (r.get("family", "qwen2.5-vl"), r["split"], r["visual_tokens"])  # noqa: E731
    old = json.loads(path.read_text()) if path.exists() else []
    new = {key(r) for r in results}
    rows = [r for r in old if key(r) not in new] + results
    path.write_text(json.dumps(sorted(rows, key=key), indent=1))
