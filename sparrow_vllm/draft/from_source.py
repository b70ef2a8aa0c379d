"""``sparrow data --from``: self-distillation data from a user's own videos, through vLLM.

The conversations of ``draft/sources.py`` go to vLLM's offline engine as chat requests
(``LLM.chat``, ``video_url`` parts): vLLM's own chat template, video loader and processor, so
the frames, their sampling and the visual token counts are exactly those ``vllm serve`` gives
the same file with the same ``--media-io-kwargs``. The target answers greedily (the EAGLE-3 /
speculators convention: a draft learns the target's own outputs); earlier turns of a
multi-turn conversation keep the dataset's answers, as a replayed log does. The anchor-layer
states come from the same engine: it runs Sparrow with a random-weight draft that carries the
anchor layers to store (its proposals are rejected, which costs nothing but speed and changes
no output) and ``SPARROW_CAPTURE`` (``serving/capture.py``) writes every verified token's
states; HF transformers is not involved, so training sees serving's numbers. Prefix caching is
off in that engine: every prompt token must be computed to be captured.

Shards and manifest are those of ``sparrow data`` (``draft/data.py``), resumable shard by
shard; the manifest counts every skipped record with its reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def capture_draft(target_dir, layers: list[int], out) -> Path:
    """A random-weight Sparrow draft of ``target_dir`` whose anchor layers are ``layers``."""
    import torch
    from transformers import AutoConfig

    from sparrow_vllm.draft.config import SparrowDraftConfig
    from sparrow_vllm.draft.export import save_draft
    from sparrow_vllm.draft.model import SparrowDraftModel

    cfg = SparrowDraftConfig.for_target(AutoConfig.from_pretrained(str(target_dir)), anchor_layers=list(layers),
                                        draft_vocab_size=1024, intermediate_size=256, num_speculative_tokens=1,
                                        verifier_name_or_path=str(target_dir), torch_dtype="float32")
    torch.manual_seed(0)
    model = SparrowDraftModel(cfg)
    if cfg.has_vocab_map:
        model.set_vocab(torch.arange(cfg.draft_vocab_size))
    return save_draft(model, out)


def chat_messages(conv, turn: int, with_answer: bool = False) -> list[dict]:
    """OpenAI messages of ``turn`` of a conversation (earlier turns with their answers; with
    ``with_answer`` this turn's answer too, as the final assistant message)."""
    if isinstance(conv.video, bytes):
        url = "data:video/mp4;base64," + base64.b64encode(conv.video).decode()
    else:
        url = "file://" + str(Path(conv.video).resolve())
    msgs = []
    for i, (q, a) in enumerate(conv.turns[:turn + 1]):
        content = [{"type": "video_url", "video_url": {"url": url}}] if i == conv.video_turn else []
        msgs.append({"role": "user", "content": content + [{"type": "text", "text": q}]})
        if i < turn or with_answer:
            msgs.append({"role": "assistant", "content": a or ""})
    return msgs


def items_of(conversations, responses: str = "target") -> list[tuple]:
    """``(sample id, conversation, turn)`` for every user turn whose earlier turns all have
    answers (a later turn needs its history); with ``responses="dataset"``, the turns that
    have an answer."""
    out = []
    for c in conversations:
        for t in range(len(c.turns)):
            if (t and c.turns[t - 1][1] is None) or (responses == "dataset" and c.turns[t][1] is None):
                break
            out.append((f"{c.id}-turn{t}" if len(c.turns) > 1 else c.id, c, t))
    return out


def run_capture(target, requests: list[dict], layers: list[int], max_new_tokens: int, media_root: str,
                engine: dict | None = None, teacher_forced: bool = False, timeout: float = 4 * 3600) -> dict:
    """Runs the capture engine in its own process: ``{"outputs": [...], "capture_dir": ...}``
    (one output per request, ``{"error": ...}`` for a request vLLM refused). ``teacher_forced``:
    each conversation ends with its answer, continued for one token (the answer's states come
    from the prefill)."""
    work = Path(tempfile.mkdtemp(prefix="sparrow-capture-"))
    draft = capture_draft(target, layers, work / "draft")
    spec = {"target": str(target), "draft": str(draft), "requests": requests,
            "max_new_tokens": 1 if teacher_forced else max_new_tokens, "teacher_forced": teacher_forced,
            "media_root": media_root, "engine": engine or {}}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "SPARROW_CAPTURE": str(work / "capture")}
    # The engine's log and progress bar go to the terminal, as a vLLM run's do.
    proc = subprocess.run([sys.executable, "-m", "sparrow_vllm.draft.from_source", str(work / "spec.json"),
                           str(work / "out.json")], timeout=timeout, env=env)
    if proc.returncode != 0 or not (work / "out.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"the vLLM engine of sparrow data --from failed (exit {proc.returncode}); its log is above")
    return json.loads((work / "out.json").read_text()) | {"capture_dir": str(work / "capture")}


def _engine_main(spec_path: str, out_path: str) -> int:
    """In the capture process: one engine, the requests batched; a request vLLM refuses (an
    undecodable video, a prompt over the max length) is retried alone and reported."""
    from sparrow_vllm.serving.cpu_env import apply_cpu_defaults

    spec = json.loads(Path(spec_path).read_text())
    apply_cpu_defaults(spec["engine"].pop("kv_cache_gib", 4))
    from vllm import LLM, SamplingParams

    kwargs = dict(model=spec["target"], dtype="float32", enforce_eager=True, enable_prefix_caching=False,
                  max_num_seqs=4, seed=0, allowed_local_media_path=spec["media_root"],
                  limit_mm_per_prompt={"video": 1, "image": 0},
                  speculative_config={"method": "sparrow", "model": spec["draft"], "num_speculative_tokens": 1})
    kwargs.update(spec["engine"])
    kwargs.setdefault("max_num_batched_tokens", max(8192, kwargs.get("max_model_len") or 8192))
    llm = LLM(**kwargs)
    sampling = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"])
    convs = [r["messages"] for r in spec["requests"]]
    mode = ({"add_generation_prompt": False, "continue_final_message": True} if spec["teacher_forced"]
            else {"add_generation_prompt": True})

    def result(o):
        return {"request_id": o.request_id, "prompt_token_ids": list(o.prompt_token_ids),
                "token_ids": list(o.outputs[0].token_ids), "finish_reason": o.outputs[0].finish_reason}

    try:
        outs = [result(o) for o in llm.chat(convs, sampling, use_tqdm=True, **mode)]
    except Exception:  # noqa: BLE001 - find the requests vLLM refuses, one at a time
        outs = []
        for c in convs:
            try:
                outs.append(result(llm.chat([c], sampling, use_tqdm=False, **mode)[0]))
            except Exception as e:  # noqa: BLE001
                outs.append({"error": f"{type(e).__name__}: {e}"})
    Path(out_path).write_text(json.dumps({"outputs": outs}))
    return 0


def skip_reason(error: str) -> str:
    """A refused request's reason, in the summary's words."""
    e = error.lower()
    if "longer than the maximum model length" in e or "max_model_len" in e or "too long" in e:
        return "too long"
    if "frame" in e and ("0" in e or "zero" in e or "empty" in e):
        return "zero-frame video"
    return "undecodable video"


def samples_of(run: dict, requests: list[dict], all_positions: bool, answers: list | None = None) -> list:
    """Per request: a ``sparrow data`` sample, or the skip reason of a refused request.
    ``answers``: the token ids of each request's teacher-forced answer (``--responses
    dataset``): the prompt ends with them; they become the sample's response."""
    from sparrow_vllm.serving.capture import assemble, read_capture

    captured = read_capture(run["capture_dir"])
    by_external: dict[str, dict] = {}
    for rid, rows in captured.items():
        by_external[rid.rsplit("-", 1)[0]] = rows
    out = []
    for i, (req, o) in enumerate(zip(requests, run["outputs"])):
        if "error" in o:
            out.append(skip_reason(o["error"]))
            continue
        rows = by_external.get(o["request_id"])
        if rows is None or not o["token_ids"]:
            out.append("no output")
            continue
        prompt, response = o["prompt_token_ids"], o["token_ids"]
        if answers is not None:
            n = len(answers[i])
            if not n or prompt[len(prompt) - n:] != answers[i]:
                out.append("answer tokenized otherwise in context")
                continue
            prompt, response = prompt[:len(prompt) - n], prompt[len(prompt) - n:] + response
        out.append(assemble(rows, prompt, response, all_positions))
    return out


def media_root(conversations) -> str:
    """The directory vLLM may read local videos from: the common parent of every file."""
    files = [str(Path(c.video).resolve()) for c in conversations if not isinstance(c.video, bytes)]
    return os.path.commonpath([os.path.dirname(f) for f in files]) if files else tempfile.gettempdir()


def check_video(path_or_bytes) -> str | None:
    """A reason to skip a video before vLLM sees it (OpenCV, the decoder vLLM uses), or None."""
    import cv2

    tmp = None
    if isinstance(path_or_bytes, bytes):
        fd, tmp = tempfile.mkstemp(suffix=".mp4")
        os.write(fd, path_or_bytes)
        os.close(fd)
    try:
        cap = cv2.VideoCapture(str(tmp or path_or_bytes))
        if not cap.isOpened():
            return "undecodable video"
        ok, frame = cap.read()
        cap.release()
        return None if ok and frame is not None and np.asarray(frame).size else "zero-frame video"
    finally:
        if tmp:
            os.unlink(tmp)


def source_settings(source, layers, all_positions: bool, max_new_tokens: int, shard_size: int,
                    media_io_kwargs: dict | None, responses: str = "target") -> dict:
    import hashlib

    source = Path(source).resolve()
    h = hashlib.sha256()
    for f in ([source] if source.is_file() else sorted(source.iterdir())):
        h.update(f.name.encode() + (f.read_bytes() if source.is_file() else str(f.stat().st_size).encode()))
    return {"source": str(source), "source_sha256": h.hexdigest(), "layers": list(layers),
            "all_positions": all_positions, "max_new_tokens": max_new_tokens, "shard_size": shard_size,
            "responses": responses, "media_io_kwargs": media_io_kwargs or {},
            "frames": "vLLM's video loader and processor (LLM.chat), as vllm serve samples the same file",
            "states": "the vLLM engine itself (serving/capture.py)", "dtype": "float16"}


GROUP_TURNS = 1024  # turns one capture engine distils before its shards are written


def distil_group(job: dict, group: list[tuple[int, list]]) -> list[tuple[int, dict]]:
    """One capture engine over the turns of ``group`` (``(shard index, items)``): writes those
    shards into ``job["out_dir"]`` and returns their manifest entries (the caller records them)."""
    from safetensors.torch import save_file

    from sparrow_vllm.draft.data import pack

    out_dir, forced = Path(job["out_dir"]), job["responses"] == "dataset"
    pending = [it for _, items in group for it in items]
    requests = [{"id": sid, "messages": chat_messages(c, t, forced)} for sid, c, t in pending]
    answers = None
    if forced:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(job["target_dir"])
        answers = [tok(c.turns[t][1], add_special_tokens=False)["input_ids"] for _, c, t in pending]
    run = run_capture(job["target_dir"], requests, job["layers"], job["max_new_tokens"], job["media_root"],
                      dict(job["engine"]), forced)
    try:
        results = dict(zip([r["id"] for r in requests], samples_of(run, requests, job["all_positions"], answers)))
    finally:  # the captured rows are in the samples now (or the group is redone)
        shutil.rmtree(Path(run["capture_dir"]).parent, ignore_errors=True)
    entries = []
    for k, items in group:
        kept = [(sid, results[sid]) for sid, _, _ in items if not isinstance(results[sid], str)]
        skipped = [[sid, results[sid]] for sid, _, _ in items if isinstance(results[sid], str)]
        name = f"shard-{k:05d}.safetensors"
        if kept:
            save_file(pack([s for _, s in kept]), str(out_dir / (name + ".tmp")))
            os.replace(out_dir / (name + ".tmp"), out_dir / name)
        entries.append((k, {
            "file": name if kept else None, "samples": [sid for sid, _ in kept], "skipped": skipped,
            "bytes": (out_dir / name).stat().st_size if kept else 0,
            "rows": int(sum(len(s["ids"]) for _, s in kept)),
            "text_rows": int(sum(int((s["text_index"] >= 0).sum()) for _, s in kept))}))
    return entries


def generate_source_dataset(target_dir, out_dir, source, video_root=None, prompts=None, layers=(15,),
                            all_positions: bool = False, max_new_tokens: int = 256, shard_size: int = 16,
                            max_model_len: int = 32768, media_io_kwargs: dict | None = None,
                            kv_cache_gib: int = 4, responses: str = "target", ray: bool = False,
                            num_workers: int | None = None, threads: int = 1) -> dict:
    """``sparrow data --from``: read ``source``, self-distil every kept turn through vLLM into
    ``out_dir`` (resumable shards; the manifest and the printed summary count every skipped
    record and turn with its reason). ``responses``: ``target`` (its greedy answers, the
    default) or ``dataset`` (the dataset's answers, teacher-forced). The turns go through vLLM
    in groups of ``GROUP_TURNS`` (one engine each, shards written after each); ``ray``: the
    groups run as Ray tasks (``ray_data.distil_source_ray``), the same shards."""
    from transformers import AutoConfig

    from sparrow_vllm.draft.data import (MANIFEST, DataMismatchError, _write_manifest, check_target, record_shard,
                                         target_identity)
    from sparrow_vllm.draft.sources import Conversation, Skipped, Tally, read_source

    out_dir = Path(out_dir)
    config = AutoConfig.from_pretrained(str(target_dir))
    L = config.get_text_config().num_hidden_layers
    layers = sorted(set(layers))
    if any(not 1 <= x < L for x in layers):
        raise ValueError(f"--layers {layers}: need layer ids in [1, {L - 1}]")
    tally, convs = Tally(), []
    for rec in read_source(source, video_root, prompts):
        if isinstance(rec, Conversation) and (reason := check_video(rec.video)):
            rec = Skipped(rec.id, reason)
        tally.add(rec)
        if isinstance(rec, Conversation):
            convs.append(rec)
    if responses not in ("target", "dataset"):
        raise ValueError(f"--responses {responses!r}: target or dataset")
    items = items_of(convs, responses)
    settings = source_settings(source, layers, all_positions, max_new_tokens, shard_size, media_io_kwargs,
                               responses)
    identity = target_identity(target_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists():
        manifest = json.loads((out_dir / MANIFEST).read_text())
        check_target(manifest, identity, str(out_dir))
        if manifest["settings"] != settings:
            diff = sorted(k for k in settings if manifest["settings"].get(k) != settings[k])
            raise DataMismatchError(f"{out_dir} holds a dataset with other settings ({', '.join(diff)}): use "
                                    "another --out or the same arguments and source")
    else:
        manifest = {"format_version": 1, "target": identity, "settings": settings, "layers": layers,
                    "all_positions": all_positions, "hidden_dtype": "float16", "shards": {}}
    manifest["n"], manifest["records"] = len(items), tally.to_dict()
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    todo = [k for k in range(len(shards)) if str(k) not in manifest["shards"]]
    engine = {"max_model_len": max_model_len, "kv_cache_gib": kv_cache_gib}
    if media_io_kwargs:
        engine["media_io_kwargs"] = media_io_kwargs
    per = max(1, GROUP_TURNS // shard_size)
    if todo:
        job = dict(target_dir=str(target_dir), out_dir=str(out_dir), layers=layers, max_new_tokens=max_new_tokens,
                   all_positions=all_positions, responses=responses, engine=engine, media_root=media_root(convs))
        if ray:
            from sparrow_vllm.draft.ray_data import distil_source_ray

            distil_source_ray(job, shards, todo, per, manifest, num_workers, threads)
        else:  # one engine a group: a crash loses one group
            for g in range(0, len(todo), per):
                for k, entry in distil_group(job, [(k, shards[k]) for k in todo[g:g + per]]):
                    record_shard(out_dir, manifest, k, entry)
    turns = Tally(kept=sum(len(s["samples"]) for s in manifest["shards"].values()))
    for s in manifest["shards"].values():
        for _, reason in s.get("skipped", ()):
            turns.skipped[reason] += 1
    manifest["summary"] = {"records": tally.line(), "turns": turns.line()}
    _write_manifest(out_dir, manifest)
    return manifest


if __name__ == "__main__":
    sys.exit(_engine_main(sys.argv[1], sys.argv[2]))
