"""Run a target (any supported family) through vLLM offline, with or without Sparrow; JSON in, JSON out.

Each engine runs in its own process (``python -m sparrow_vllm.harness.offline SPEC.json``) so
tests, the demo and benchmarks can compare engines side by side without one engine's
memory or threads leaking into the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SPEC_METRICS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
    "vllm:spec_decode_num_accepted_tokens_per_pos",
    "vllm:num_preemptions",
)


def world_prompt_specs(split: str, indices, frames, question: str | None = None) -> list[dict]:
    """Prompt descriptions (JSON-able): SparrowWorld samples, or ``frames=0`` for text only."""
    frames = frames if isinstance(frames, (list, tuple)) else [frames] * len(indices)
    return [{"split": split, "index": int(i), "frames": int(f), "question": question}
            for i, f in zip(indices, frames)]


def _build_prompts(family, processor, specs: list[dict]) -> list[dict]:
    from sparrow_vllm.world import make_sample

    prompts = []
    for s in specs:
        if s.get("text") is not None:
            prompts.append({"prompt": processor.apply_chat_template(
                [{"role": "user", "content": s["text"]}], add_generation_prompt=True, tokenize=False)})
            continue
        if s.get("task"):
            prompts.append(_long_prompt(family, processor, s))
            continue
        sample = make_sample(s["split"], s["index"], max(16, s["frames"]))
        question = s.get("question") or sample.question
        history = [tuple(t) for t in s.get("history") or ()]  # earlier (question, answer) turns
        if s["frames"] == 0:
            prompts.append({"prompt": family.prompt_text(processor, question, history)
                            .replace(family.video_placeholder(), "")})
        else:
            prompts.append(family.vllm_prompt(processor, sample.frames(), question, history))
    return prompts


def long_prompt_specs(task: str, split: str, indices, frames: int, turn: int | None = None) -> list[dict]:
    """Prompt descriptions of long-task turns (``world.story``): turn ``turn`` of each sample
    (default: the last), its earlier turns with their reference answers."""
    return [{"task": task, "split": split, "index": int(i), "frames": int(frames), "turn": turn} for i in indices]


def _long_prompt(family, processor, s: dict) -> dict:
    """``s["question"]`` (optional): another phrasing of the turn's question;
    ``s["history_answers"]`` (optional): the answers of the earlier turns to use instead of the
    reference ones (what the engine itself said, in a multi-turn benchmark)."""
    from sparrow_vllm.target.prompt import long_turn
    from sparrow_vllm.world.story import make_long_sample

    sample = make_long_sample(s["task"], s["split"], s["index"], s["frames"])
    turn = long_turn(sample, len(sample.turns) - 1 if s.get("turn") is None else s["turn"])
    history = turn["history"]
    if s.get("history_answers") is not None:
        history = [(q, a) for (q, _), a in zip(history, s["history_answers"], strict=True)]
    question = s.get("question") or turn["question"]
    return family.vllm_prompt(processor, turn["videos"], question, history, turn["video_turns"])


def _spec_metrics(llm) -> dict:
    out = {}
    for m in llm.get_metrics():
        if m.name in SPEC_METRICS:
            out[m.name.split(":")[1]] = getattr(m, "values", None) or getattr(m, "value", 0)
    drafts = out.get("spec_decode_num_drafts", 0) or 0
    acc = out.get("spec_decode_num_accepted_tokens", 0) or 0
    per_pos = out.get("spec_decode_num_accepted_tokens_per_pos") or []
    return {
        "_per_pos": list(per_pos),
        "num_preemptions": out.get("num_preemptions", 0) or 0,
        "num_drafts": drafts,
        "num_draft_tokens": out.get("spec_decode_num_draft_tokens", 0) or 0,
        "num_accepted_tokens": acc,
        "mean_accepted_length": (1 + acc / drafts) if drafts else None,
        "acceptance_per_position": [a / drafts for a in per_pos] if drafts else [],
    }


def run_engine(spec: dict) -> dict:
    """``spec``: target, prompts, sampling, speculative_config, engine (LLM kwargs)."""
    from sparrow_vllm.serving.cpu_env import apply_cpu_defaults

    apply_cpu_defaults(spec.get("kv_cache_gib", 4))
    from vllm import LLM, SamplingParams

    from sparrow_vllm.families import family_of

    target = spec["target"]
    family = family_of(target)
    kwargs = dict(model=target, dtype="float32", enforce_eager=True, max_model_len=32768,
                  max_num_seqs=4, disable_log_stats=False, enable_prefix_caching=True, seed=0,
                  limit_mm_per_prompt={"video": 1, "image": 1})
    kwargs.update(spec.get("engine", {}))
    # vLLM 0.32 sizes its encoder cache max(max_num_batched_tokens, ~8k tokens of a profiled
    # video): a longer video is refused unless one prefill step may hold all of it.
    kwargs.setdefault("max_num_batched_tokens", max(8192, kwargs["max_model_len"]))
    if spec.get("speculative_config"):
        kwargs["speculative_config"] = spec["speculative_config"]
    profile = _DraftProfile() if spec.get("profile_draft") else None
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    engine_s = time.perf_counter() - t0
    processor = family.load_processor(target)
    build = lambda specs: _build_prompts(family, processor, specs)  # noqa: E731
    sampling = SamplingParams(**{"temperature": 0.0, "max_tokens": 64, **spec.get("sampling", {})})
    # "cells": several prompt sets run one after another on the same engine (benchmarks).
    cells = spec.get("cells") or [{"prompts": spec["prompts"]}]
    results, before = [], _spec_metrics(llm)
    steps_log = os.environ.get("SPARROW_PROFILE_STEPS")  # engine steps timed (vllm_compat._time_steps)
    for i, cell in enumerate(cells):
        if cell.get("warmup"):
            llm.generate(build(cell["warmup"]), sampling, use_tqdm=False)
            before = _spec_metrics(llm)
        if steps_log:  # the engine is idle here: steps after this line are this cell's
            with open(steps_log, "a") as f:
                f.write(json.dumps({"cell": i}) + "\n")
        if profile:
            profile.read()  # drop the warm-up's calls
        cell_result = _run_cell(llm, build, cell["prompts"], sampling)
        after = _spec_metrics(llm)
        cell_result["spec"] = _metrics_delta(before, after)
        if profile:
            cell_result["draft_calls"], cell_result["draft_s"] = profile.read()
        before = after
        results.append(cell_result)
    if not spec.get("cells"):
        return {"engine_start_s": engine_s, **results[0]}
    return {"engine_start_s": engine_s, "cells": results}


class _DraftProfile:
    """Reads the per-``propose()`` wall times the engine appends to ``SPARROW_PROFILE``
    (set before the engine starts: its processes inherit it; see vllm_compat._time_drafter)."""

    def __init__(self):
        import tempfile

        fd, self.path = tempfile.mkstemp(prefix="sparrow-profile-", suffix=".txt")
        os.close(fd)
        os.environ["SPARROW_PROFILE"] = self.path
        self.offset = 0

    def read(self) -> tuple[int, float]:
        """``(calls, seconds)`` since the last read."""
        with open(self.path) as f:
            f.seek(self.offset)
            lines = f.read().split()
            self.offset = f.tell()
        return len(lines), sum(float(x) for x in lines)


def _run_cell(llm, build, prompt_specs, sampling) -> dict:
    """Prompt specs are SparrowWorld/text descriptions (``_build_prompts``) or, all of them,
    ``{"messages": [...]}``: OpenAI chat messages, run through ``LLM.chat`` (vLLM's own chat
    template and video loader, as ``vllm serve`` would)."""
    chats = bool(prompt_specs) and all("messages" in s for s in prompt_specs)
    prompts = None if chats else build(prompt_specs)
    t0 = time.perf_counter()
    if chats:
        outs = llm.chat([s["messages"] for s in prompt_specs], sampling, use_tqdm=False)
    else:
        outs = llm.generate(prompts, sampling, use_tqdm=False)
    wall = time.perf_counter() - t0
    results = []
    for o in outs:
        c = o.outputs[0]
        m = o.metrics
        decode_s = (m.last_token_ts - m.first_token_ts) if m is not None else None
        results.append({
            "request_id": o.request_id, "prompt_token_ids": list(o.prompt_token_ids),
            "prompt_tokens": len(o.prompt_token_ids), "token_ids": list(c.token_ids), "text": c.text,
            "finish_reason": c.finish_reason,
            "ttft_s": (m.first_token_ts - m.scheduled_ts) if m is not None else None,
            "first_token_ts": m.first_token_ts if m is not None else None,
            "last_token_ts": m.last_token_ts if m is not None else None,
            "decode_s": decode_s,
            "decode_tok_s": ((len(c.token_ids) - 1) / decode_s) if decode_s else None,
        })
    return {"generate_s": wall, "outputs": results}


def _metrics_delta(a: dict, b: dict) -> dict:
    d = {k: b[k] - a[k] for k in ("num_preemptions", "num_drafts", "num_draft_tokens", "num_accepted_tokens")}
    per_a = a.get("_per_pos") or []
    per_b = b.get("_per_pos") or []
    per = [y - (per_a[i] if i < len(per_a) else 0) for i, y in enumerate(per_b)]
    d["mean_accepted_length"] = (1 + d["num_accepted_tokens"] / d["num_drafts"]) if d["num_drafts"] else None
    d["acceptance_per_position"] = [x / d["num_drafts"] for x in per] if d["num_drafts"] else []
    return d


def run_engine_subprocess(spec: dict, timeout: float = 1800, log: Path | None = None) -> dict:
    """Runs :func:`run_engine` in a fresh Python process; raises with its log tail on failure."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = Path(d) / "spec.json", Path(d) / "out.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "sparrow_vllm.harness.offline", str(spec_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
        if log is not None:
            log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not out_path.exists():
            lines = (proc.stdout + proc.stderr).splitlines()
            # the errors, and what tells of a process that died without one (a worker's signal)
            causes = [x for x in lines if ("Error" in x and "Traceback" not in x)
                      or any(w in x for w in ("died", "Killed", "Segmentation fault", "signal"))][-12:]
            tail = "\n".join(causes + ["..."] + lines[-25:])
            raise RuntimeError(f"vLLM engine run failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_path.read_text())


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    spec = json.loads(Path(argv[0]).read_text())
    result = run_engine(spec)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
