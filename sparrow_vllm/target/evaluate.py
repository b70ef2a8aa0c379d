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
    return _summary(rows, split, n, num_frames, start_index, t0, family_of(model.config)) | {"engine": "transformers"}


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
    from sparrow_vllm.harness.offline import run_engine_subprocess, world_prompt_specs

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
    return _summary(rows, split, n, num_frames, start_index, t0, family) | {"engine": "vllm"} | _stamp(target)


# Answer budget of a long-task turn: the longest reference narration (~540 tokens at 50k
# visual tokens) with room to spare.
LONG_MAX_TOKENS = 768


def evaluate_long(target, task: str, split: str = "test", n: int = 20, num_frames: int = 128,
                  start_index: int = 0, max_num_seqs: int = 8) -> dict:
    """Greedy answers to every turn of ``n`` long-task samples (``world.story``) through vLLM,
    each turn after the reference answers of the turns before it: per turn exact (the whole
    answer) and, where the reference is a narration, event recall and precision
    (``score_narration``); the summary averages them over turns."""
    from sparrow_vllm.harness.offline import long_prompt_specs, run_engine_subprocess
    from sparrow_vllm.world.story import make_long_sample, parse_narration, score_narration

    t0 = time.time()
    family = family_of(target)
    samples = [make_long_sample(task, split, i, num_frames) for i in range(start_index, start_index + n)]
    specs = [spec for s in samples for t in range(len(s.turns))
             for spec in long_prompt_specs(task, split, [s.index], num_frames, t)]
    videos = max(sum(t["clip"] is not None for t in s.turns) for s in samples)
    max_model_len = family.visual_tokens(num_frames) + 4096
    run = run_engine_subprocess({
        "target": str(target), "prompts": specs, "sampling": {"max_tokens": LONG_MAX_TOKENS},
        "engine": {"max_num_seqs": max_num_seqs, "max_model_len": max_model_len,
                   "limit_mm_per_prompt": {"video": videos, "image": 1}},
        "kv_cache_gib": kv_cache_gib_for(target, min(len(specs), max_num_seqs) * max_model_len),
    }, timeout=4 * 3600)
    rows, outs = [], iter(run["outputs"])
    for s in samples:
        for t, turn in enumerate(s.turns):
            out = next(outs)
            answer, ref = out["text"].strip(), turn["answer"]
            row = {"id": s.id, "turn": t, "question": turn["question"], "reference": ref, "answer": answer,
                   "exact": " ".join(answer.split()) == " ".join(ref.split()),
                   "output_tokens": len(out["token_ids"]), "finish_reason": out["finish_reason"]}
            if parse_narration(ref):
                row.update(score_narration(ref, answer))
            rows.append(row)
    narrated = [r for r in rows if "recall" in r]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"family": family.name, "task": task, "split": split, "n": n, "turns": len(rows),
            "num_frames": num_frames, "visual_tokens": family.visual_tokens(num_frames),
            "exact_per_turn": mean([r["exact"] for r in rows]),
            "event_recall": mean([r["recall"] for r in narrated]),
            "event_precision": mean([r["precision"] for r in narrated]),
            "output_tokens_mean": mean([r["output_tokens"] for r in rows]),
            "seconds": round(time.time() - t0, 1), "engine": "vllm", "rows": rows} | _stamp(target)


def _stamp(target) -> dict:
    """An embedded target's build record (which vision parts it holds), if it is one."""
    stamp = Path(target) / "sparrow_target.json"
    return {"target_stamp": json.loads(stamp.read_text())} if stamp.exists() else {}


def evaluate_data(data_dir, target=None) -> dict:
    """Score the target's greedy answers that a `sparrow data` set stores (its self-distilled
    responses), without running a model: the same samples, rows and summary as
    :func:`evaluate`. A draft's test set at ~25k visual tokens thereby reports what the target
    answered there for free. ``target``: where to read the tokenizer (default: the path the
    manifest recorded). Answers are capped at the data's ``max_new_tokens`` (eval-target: 48)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from sparrow_vllm.draft.data import load_manifest, target_fingerprint

    t0 = time.time()
    manifest = load_manifest(data_dir)
    st = manifest["settings"]
    if "source" in st:
        raise ValueError(f"{data_dir} holds `sparrow data --from` turns, not SparrowWorld questions: nothing to "
                         "score them against")
    if st.get("task", "qa") != "qa":
        raise ValueError(f"{data_dir} holds {st['task']} turns: --from-data scores qa datasets (score the long "
                         "tasks with eval-target --task)")
    if st.get("repeat_answers", 1) > 1:
        raise ValueError(f"{data_dir} stores repeated answers (--repeat-answers): not the target's own answers")
    target = Path(target or manifest["target"]["path"])
    if not (target / "config.json").is_file():
        raise FileNotFoundError(f"{target}: the target of {data_dir} is not there; pass its directory")
    if target_fingerprint(target) != manifest["target"]["fingerprint"]:
        raise ValueError(f"{target} is not the target that answered in {data_dir} (its weights changed since: "
                         "rebuilt from other vision parts?); pass that target's directory")
    family = family_of(target)
    tok = AutoTokenizer.from_pretrained(str(target))
    stops = set(family.eos_token_ids(tok))
    rows, capped = [], 0
    for k in sorted(manifest["shards"], key=int):
        shard = manifest["shards"][k]
        with safe_open(str(Path(data_dir) / shard["file"]), "pt") as f:
            ids, offsets, starts = f.get_tensor("ids"), f.get_tensor("offsets"), f.get_tensor("response_start")
        for j, sid in enumerate(shard["samples"]):
            s = make_sample(st["split"], st["start"] + int(k) * st["shard_size"] + j, st["num_frames"])
            if s.id != sid:
                raise ValueError(f"{data_dir}: shard {k} sample {j} is {sid}, expected {s.id}")
            response = ids[offsets[j] + starts[j]:offsets[j + 1]].tolist()
            capped += len(response) >= st["max_new_tokens"] and not set(response) & stops
            rows.append(_scored_row(s, tok.decode(response, skip_special_tokens=True).strip()))
    return (_summary(rows, st["split"], len(rows), st["num_frames"], st["start"], t0, family)
            | {"engine": "transformers (stored by sparrow data)", "source": str(data_dir),
               "max_new_tokens": st["max_new_tokens"], "answers_at_token_cap": int(capped)} | _stamp(target))


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
    key = lambda r: (r.get("family", "qwen2.5-vl"), r.get("task", "qa"), r["split"], r["visual_tokens"])  # noqa: E731
    old = json.loads(path.read_text()) if path.exists() else []
    new = {key(r) for r in results}
    rows = [r for r in old if key(r) not in new] + results
    path.write_text(json.dumps(sorted(rows, key=key), indent=1))
