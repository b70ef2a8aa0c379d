"""``sparrow data``: self-distillation data for the draft, from the target's own greedy answers.

For each SparrowWorld sample the target (transformers) greedily answers the question; the
hidden states of the requested layers come from that same generate call (prefill + decode
steps, as vLLM computes them). Stored per kept position (TEXT positions only, unless
``all_positions`` for the full-context baseline), concatenated over the samples of a shard::

    ids         int32 [N]         token at the position
    greedy      int32 [N]         target's greedy next token (-1 where not computed: prompt)
    seq_pos     int32 [N]         position in the full target sequence
    text_index  int32 [N]         index among the text positions (-1: visual)
    t_pos       int32 [N]         position vLLM gives a 1-D draft (mRoPE temporal one on Qwen2.5-VL)
    hidden      fp16  [N, A, H]   HF hidden_states[l] (= input of decoder layer l) per layer
    offsets     int64 [S + 1]     sample s is rows offsets[s]:offsets[s+1]
    response_start int32 [S]      row (within the sample) of the first generated token

With ``repeat_answers`` R > 1 (training data only) the response is instead the target's
greedy answer repeated R times (" "-joined, capped at ``max_new_tokens``) and teacher-forced:
``greedy`` is then the target's own argmax after each prefix, which need not be the next
stored token. Long videos drive a small Video LLM into loops ("The video is a 2. The video
is a 2. ..."); the target's short-clip answers never repeat, so a draft trained on them alone
never learns to copy, and these rows teach it what the target predicts inside a repetition,
at short-clip cost. ``eval-draft`` refuses such data (its rows are not a greedy trajectory).
Measured (``docs/draft-study.md`` section D): mixed, so the committed drafts do not use it.

``manifest.json`` records the target identity, the settings and each finished shard;
a shard counts as done only once listed there (files are written to a temp name and
renamed first), so an interrupted run resumes where it stopped and redoes a half shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparrow_vllm.families import family_of

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class DataMismatchError(ValueError):
    """A dataset does not belong to the given target / draft / settings."""


# ---- target identity ------------------------------------------------------------------------
def target_fingerprint(target_dir) -> str:
    """sha256 over the target's weight files (names, sizes, first/last MiB): tells two
    checkpoints of the same architecture apart (e.g. before/after vision training)."""
    h = hashlib.sha256()
    for f in sorted(Path(target_dir).glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def target_identity(target_dir, config) -> dict:
    family = family_of(config)
    tc = family.text_config(config)
    name = Path(target_dir).name
    stamp = Path(target_dir) / "sparrow_target.json"
    if stamp.exists():
        name = json.loads(stamp.read_text()).get("name", name)
    return {
        "name": name, "path": str(Path(target_dir).resolve()), "fingerprint": target_fingerprint(target_dir),
        "hidden_size": tc.hidden_size, "num_layers": tc.num_hidden_layers, "vocab_size": tc.vocab_size,
        "video_token_id": getattr(config, "video_token_id", None),
        "image_token_id": getattr(config, "image_token_id", None),
        "family": family.name,
    }


def data_target(manifest: dict) -> str:
    """The target a dataset was extracted from, else (data made on another machine) the
    embedded one; ``check_target`` refuses it if its fingerprint differs."""
    path = manifest["target"]["path"]
    if Path(path).is_dir():
        return path
    from sparrow_vllm.target.paths import default_target_dir

    return str(default_target_dir())


def check_target(manifest: dict, identity: dict, what: str) -> None:
    got = manifest["target"]
    for key in ("fingerprint", "hidden_size", "num_layers", "vocab_size"):
        if got.get(key) != identity.get(key):
            raise DataMismatchError(
                f"{what} was extracted from target {got.get('name')!r} ({key}={got.get(key)}) but --target "
                f"is {identity.get('name')!r} ({key}={identity.get(key)}): re-extract with "
                f"`sparrow data --target {identity.get('path')}` or pass the matching --target "
                f"(the data's: {got.get('path')})")


def check_draft_compatible(manifest: dict, cfg) -> None:
    """The dataset can feed this draft config (same target dims; anchors stored; positions)."""
    t = manifest["target"]
    for key, field in (("hidden_size", "target_hidden_size"), ("num_layers", "target_num_layers"),
                       ("vocab_size", "target_vocab_size")):
        if t[key] != getattr(cfg, field):
            raise DataMismatchError(f"dataset target {key}={t[key]} but draft config {field}="
                                    f"{getattr(cfg, field)}: this data is for another target")
    missing = [l for l in cfg.anchor_layers if l not in manifest["layers"]]
    if missing:
        raise DataMismatchError(f"draft anchor_layers {cfg.anchor_layers} need layers {missing} that the "
                                f"dataset does not store (it has {manifest['layers']}); re-extract with --layers")
    if not cfg.text_only and not manifest["all_positions"]:
        raise DataMismatchError("the full-context (eagle3) draft needs visual positions: extract with --all-positions")


# ---- one sample -------------------------------------------------------------------------------
@torch.no_grad()
def extract_sample(model, processor, frames, question: str, layers: list[int], all_positions: bool,
                   max_new_tokens: int, dtype=torch.float16, repeat_answers: int = 1, history=(),
                   video_turns=(0,), visual_repeats: float = 1.0) -> dict[str, torch.Tensor]:
    """Greedy answer + states of one sample; tensors as in the module docstring (one sample).
    ``repeat_answers`` > 1: the answer repeated and teacher-forced (:func:`_repeat_answer`).
    ``history``, ``video_turns``: earlier turns of a conversation (``frames`` then one video per
    turn in ``video_turns``), as in ``FamilyAdapter.hf_inputs``. ``visual_repeats`` m > 1: the
    target attends as if every visual key were there m times (:func:`simulated_dilution`)."""
    family = family_of(model.config)
    inputs = family.hf_inputs(processor, frames, question, history=history,
                              video_turns=video_turns).to(model.device)  # GPU actors of `--ray`
    prompt_len = inputs["input_ids"].shape[1]
    with simulated_dilution(model, inputs["input_ids"][0], visual_repeats, max_new_tokens):
        return _extract(model, processor, family, inputs, prompt_len, layers, all_positions, max_new_tokens,
                        dtype, repeat_answers)


@contextlib.contextmanager
def simulated_dilution(model, prompt_ids: torch.Tensor, m: float, max_new_tokens: int):
    """Length augmentation of the anchor states at short-clip cost: within the block, the
    target's LM adds ``log m`` to the attention logit of every visual key, which is exactly
    attention over ``m`` copies of each visual key/value: the dilution a video ``m`` times
    longer brings (not its positions, nor its extra content). The target's own training uses
    the same simulation (``target/train_vision.long_video_attention``). m = 1: unchanged."""
    if m == 1.0:
        yield
        return
    from sparrow_vllm.target import train_vision as tv

    family = family_of(model.config)
    text_config = family.text_config(model.config)
    if text_config._attn_implementation != tv.LONG_VIDEO_ATTENTION:
        tv.use_long_video_attention(text_config)
    is_visual = ~family.is_text(model.config, prompt_ids.cpu())
    bias = torch.cat([is_visual.float() * math.log(m), torch.zeros(max_new_tokens + 1)]).to(prompt_ids.device)
    tv._visual_key_bias[0] = bias
    try:
        yield
    finally:
        tv._visual_key_bias[0] = None


def dilution_of(visual_tokens: int, simulate_visual_tokens: int) -> float:
    """The ``m`` that makes a video of ``visual_tokens`` attend like one of
    ``simulate_visual_tokens`` (0: no simulation, m = 1)."""
    if not simulate_visual_tokens:
        return 1.0
    if simulate_visual_tokens < visual_tokens:
        raise ValueError(f"simulate_visual_tokens={simulate_visual_tokens} is shorter than the clips' "
                         f"{visual_tokens} visual tokens: simulate a longer video, or extract that length")
    return simulate_visual_tokens / visual_tokens


def _extract(model, processor, family, inputs, prompt_len, layers, all_positions, max_new_tokens, dtype,
             repeat_answers):
    tok = processor.tokenizer
    eos = family.eos_token_ids(tok)
    if model.generation_config.eos_token_id is not None:
        e = model.generation_config.eos_token_id
        eos += e if isinstance(e, list) else [e]
    family.before_generate(model)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
                         output_hidden_states=True, return_dict_in_generate=True)
    seq = out.sequences[0].cpu()                # [T] prompt + response
    steps = out.hidden_states                   # per decode step: tuple over L+1 of [1, t, H]
    num_layers = family.text_config(model.config).num_hidden_layers
    if num_layers in layers:
        raise ValueError("anchor layer == num_layers: HF returns the final-normed state there, "
                         "vLLM the pre-norm one; use a layer id < num_layers")
    if repeat_answers > 1 and any(int(t) not in eos for t in seq[prompt_len:]):  # an empty answer: nothing to repeat
        family.before_generate(model)
        seq, states, response_greedy = _repeat_answer(model, inputs, seq[prompt_len:], eos, tok,
                                                      repeat_answers, max_new_tokens)
        steps = (states,)
    else:
        response_greedy = seq[prompt_len:]
    T = len(seq)
    greedy = torch.full((T,), -1, dtype=torch.long)
    greedy[prompt_len - 1:T - 1] = response_greedy
    # The last generated token is never fed back, so its states do not exist: zeros (the
    # draft never reads that row: no query comes after the final token).
    per_layer = []
    for l in layers:
        parts = [steps[0][l][0]] + [st[l][0] for st in steps[1:]]
        h = torch.cat(parts, 0).cpu()
        per_layer.append(torch.cat([h, h.new_zeros(len(seq) - len(h), h.shape[1])], 0))
    hidden = torch.stack(per_layer, 1)          # [T, A, H]
    is_text = family.is_text(model.config, seq)
    text_index = torch.cumsum(is_text.long(), 0) - 1
    text_index[~is_text] = -1
    t_pos = family.draft_positions(model, seq, inputs)
    keep = torch.ones(T, dtype=torch.bool) if all_positions else is_text
    rows = keep.nonzero()[:, 0]
    response_start = int((rows < prompt_len).sum())
    return {
        "ids": seq[rows].int(), "greedy": greedy[rows].int(), "seq_pos": rows.int(),
        "text_index": text_index[rows].int(), "t_pos": t_pos[rows].int(),
        "hidden": hidden[rows].to(dtype).contiguous(),
        "response_start": torch.tensor([response_start], dtype=torch.int32),
    }


@torch.no_grad()
def _repeat_answer(model, inputs, answer: torch.Tensor, eos: list[int], tok, repeat: int, max_new_tokens: int):
    """Teacher-force the prompt + ``answer`` (its EOS dropped) repeated ``repeat`` times.

    Returns ``(seq [T], hidden_states (tuple over L+1 of [1, T - 1, H]), greedy [T - prompt_len])``:
    the forced token ids, the target's states over all but the last row (as generation
    leaves them), and its argmax after the prompt and each forced token but the last (the
    draft's labels there)."""
    from sparrow_vllm.target.prompt import append_tokens

    prompt_len = inputs["input_ids"].shape[1]
    keep = [int(t) for t in answer if int(t) not in eos]
    text = " ".join([tok.decode(keep)] * repeat)
    forced = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_new_tokens]
    fed = append_tokens(dict(inputs), forced)
    out = model(**fed, output_hidden_states=True)
    seq = fed["input_ids"][0].cpu()
    greedy = out.logits[0, prompt_len - 1:-1].argmax(-1).cpu()
    states = tuple(h[:, :-1] for h in out.hidden_states)
    return seq, states, greedy


def pack(samples: list[dict]) -> dict[str, torch.Tensor]:
    lengths = [len(s["ids"]) for s in samples]
    out = {k: torch.cat([s[k] for s in samples], 0).contiguous() for k in samples[0]}
    out["offsets"] = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.long)
    return out


def unpack(tensors: dict[str, torch.Tensor]) -> list[dict]:
    off = tensors["offsets"].tolist()
    out = []
    for s in range(len(off) - 1):
        d = {k: v[off[s]:off[s + 1]] for k, v in tensors.items() if k not in ("offsets", "response_start")}
        d["response_start"] = int(tensors["response_start"][s])
        out.append(d)
    return out


# ---- the command ---------------------------------------------------------------------------
@dataclass
class DataSpec:
    split: str
    n: int
    num_frames: int
    layers: list[int]
    all_positions: bool = False
    max_new_tokens: int = 64
    shard_size: int = 16
    start: int = 0
    dtype: str = "float16"
    repeat_answers: int = 1  # > 1: training rows inside a repetition (module docstring)
    task: str = "qa"  # or a long task of world/story.py: sample i is turn i % turns of its conversation
    simulate_visual_tokens: int = 0  # > 0: every clip attends as if this long (dilution_of)

    def __post_init__(self):
        from sparrow_vllm.world.story import LONG_TASKS

        if self.repeat_answers < 1:
            raise ValueError(f"repeat_answers={self.repeat_answers}: must be >= 1 (1 = the plain greedy answer)")
        if self.task not in ("qa", *LONG_TASKS):
            raise ValueError(f"task {self.task!r}: expected qa or one of {', '.join(LONG_TASKS)}")
        if self.task != "qa" and self.repeat_answers > 1:
            raise ValueError("repeat_answers applies to the qa task only")
        if self.simulate_visual_tokens < 0:
            raise ValueError(f"simulate_visual_tokens={self.simulate_visual_tokens}: must be >= 0 (0 = off)")
        if self.simulate_visual_tokens and self.task != "qa":
            raise ValueError("simulate_visual_tokens applies to the qa task only")
        if self.task != "qa":
            from sparrow_vllm.world.story import make_long_sample

            make_long_sample(self.task, self.split, self.start, self.num_frames)  # a stream needs >= 128 frames

    def sample(self, i: int):
        """``(id, frames, question, history, video_turns)`` of sample ``i``: a short question, or
        one turn of a long-task conversation after its earlier turns' reference answers."""
        if self.task == "qa":
            from sparrow_vllm.world import make_sample

            s = make_sample(self.split, i, self.num_frames)
            return s.id, s.frames(), s.question, (), (0,)
        from sparrow_vllm.target.prompt import long_turn
        from sparrow_vllm.world.story import make_long_sample

        s = make_long_sample(self.task, self.split, i, self.num_frames)
        t = i % len(s.turns)
        turn = long_turn(s, t)
        return f"{s.id}-turn{t}", turn["videos"], turn["question"], turn["history"], turn["video_turns"]

    def settings(self) -> dict:
        s = {"split": self.split, "num_frames": self.num_frames, "layers": list(self.layers),
             "all_positions": self.all_positions, "max_new_tokens": self.max_new_tokens,
             "shard_size": self.shard_size, "start": self.start, "dtype": self.dtype}
        if self.repeat_answers > 1:  # absent otherwise: datasets written before it stay valid
            s["repeat_answers"] = self.repeat_answers
        if self.task != "qa":  # likewise
            s["task"] = self.task
        if self.simulate_visual_tokens:  # likewise
            s["simulate_visual_tokens"] = self.simulate_visual_tokens
        return s


def load_manifest(data_dir) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a dataset written by `sparrow data`")
    return json.loads(path.read_text())


def _write_manifest(data_dir: Path, manifest: dict) -> None:
    # Shards in index order, whatever order they finished in (Ray): the same bytes either way.
    manifest["shards"] = dict(sorted(manifest["shards"].items(), key=lambda kv: int(kv[0])))
    tmp = data_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, data_dir / MANIFEST)


def load_target(target_dir, device: str = "cpu"):
    """``(model, processor)`` of a target dir of any supported family, fp32, eval mode."""
    family = family_of(target_dir)
    return family.load_hf(target_dir).to(device), family.load_processor(target_dir)


def open_dataset(target_dir, out_dir, spec: DataSpec, config) -> dict:
    """The manifest of ``out_dir`` for ``spec`` (new, or an existing one checked against the
    target and settings). ``config``: the target's HF config."""
    identity = target_identity(target_dir, config)
    L = config.text_config.num_hidden_layers
    bad = [l for l in spec.layers if not 1 <= l < L]
    if bad or spec.layers != sorted(set(spec.layers)):
        raise ValueError(f"--layers {spec.layers}: need distinct ascending layer ids in [1, {L - 1}]")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        check_target(manifest, identity, str(out_dir))
        old = {k: v for k, v in manifest["settings"].items()}
        new = spec.settings()
        if old != new:
            diff = {k: (old.get(k), new[k]) for k in new if old.get(k) != new[k]}
            raise DataMismatchError(f"{out_dir} holds a dataset with other settings {diff} "
                                    "(old, new): use another --out or the same arguments")
    else:
        manifest = {"format_version": FORMAT_VERSION, "target": identity, "settings": spec.settings(),
                    "layers": list(spec.layers), "all_positions": spec.all_positions,
                    "hidden_dtype": spec.dtype, "n": 0, "shards": {}}
    manifest["n"] = max(manifest.get("n", 0), spec.n)
    return manifest


def pending_shards(manifest: dict, spec: DataSpec) -> tuple[list[int], int]:
    """``(shard ids still to write, samples already done)``: a shard is done once listed
    in the manifest with all its samples."""
    num_shards = (spec.n + spec.shard_size - 1) // spec.shard_size
    todo = [k for k in range(num_shards) if str(k) not in manifest["shards"]
            or len(manifest["shards"][str(k)]["samples"]) < min(spec.shard_size, spec.n - k * spec.shard_size)]
    done = sum(len(manifest["shards"][str(k)]["samples"]) for k in range(num_shards) if str(k) not in todo
               and str(k) in manifest["shards"])
    return todo, done


def write_shard(model, processor, spec: DataSpec, k: int, out_dir, on_sample=None) -> dict:
    """Extract shard ``k`` of ``spec`` and write it (temp name, then rename) into ``out_dir``;
    returns its manifest entry. The one per-shard code path of every ``sparrow data`` run
    (single process or Ray actors): same inputs, same bytes."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    indices = range(spec.start + k * spec.shard_size, spec.start + min(spec.n, (k + 1) * spec.shard_size))
    samples, ids = [], []
    m = dilution_of(family_of(model.config).visual_tokens(spec.num_frames), spec.simulate_visual_tokens)
    for i in indices:
        sid, frames, question, history, video_turns = spec.sample(i)
        rec = extract_sample(model, processor, frames, question, spec.layers, spec.all_positions,
                             spec.max_new_tokens, DTYPES[spec.dtype], spec.repeat_answers, history, video_turns, m)
        samples.append(rec)
        ids.append(sid)
        if on_sample is not None:
            on_sample()
    name = f"shard-{k:05d}.safetensors"
    tmp = out_dir / (name + ".tmp")
    save_file(pack(samples), str(tmp))
    os.replace(tmp, out_dir / name)
    return {
        "file": name, "samples": ids, "bytes": (out_dir / name).stat().st_size,
        "rows": int(sum(len(r["ids"]) for r in samples)),
        "text_rows": int(sum(int((r["text_index"] >= 0).sum()) for r in samples)),
    }


def record_shard(out_dir, manifest: dict, k: int, entry: dict) -> None:
    """List a written shard in the manifest: from here on it counts as done."""
    manifest["shards"][str(k)] = entry
    _write_manifest(Path(out_dir), manifest)


def generate_dataset(target_dir, out_dir, spec: DataSpec, model=None, processor=None,
                     progress: bool = True, stop_after_shards: int | None = None) -> dict:
    """Extract (or resume extracting) ``spec`` into ``out_dir``; returns the manifest.

    ``model``/``processor`` may be passed in (tests); else loaded from ``target_dir`` in fp32.
    ``stop_after_shards``: write at most that many new shards, then return (tests/interrupts).
    """
    from tqdm import tqdm

    if model is None:
        model, processor = load_target(target_dir)
    manifest = open_dataset(target_dir, out_dir, spec, model.config)
    todo, done = pending_shards(manifest, spec)
    bar = tqdm(total=spec.n, initial=done, desc=f"data {spec.split}", unit="sample", disable=not progress)
    written = 0
    for k in todo:
        if stop_after_shards is not None and written >= stop_after_shards:
            break
        record_shard(out_dir, manifest, k, write_shard(model, processor, spec, k, out_dir, lambda: bar.update(1)))
        written += 1
    bar.close()
    return manifest


def load_samples(data_dir, layers: list[int] | None = None, limit: int | None = None) -> tuple[dict, list[dict]]:
    """``(manifest, samples)``; each sample's ``hidden`` is ``[n, A', H]`` for ``layers`` (in
    the order given; default all stored)."""
    from safetensors.torch import load_file

    manifest = load_manifest(data_dir)
    stored = manifest["layers"]
    sel = None if layers is None else [stored.index(l) for l in layers]
    out = []
    for k in sorted(manifest["shards"], key=int):
        if not manifest["shards"][k].get("file"):  # a `--from` shard whose every turn was skipped
            continue
        for s, sid in zip(unpack(load_file(str(Path(data_dir) / manifest["shards"][k]["file"]))),
                          manifest["shards"][k]["samples"]):
            if sel is not None:
                s["hidden"] = s["hidden"][:, sel]
            s["id"] = sid
            out.append(s)
            if limit is not None and len(out) >= limit:
                return manifest, out
    return manifest, out


def text_only_copy(src, dst) -> dict:
    """Write the text-position subset of an ``--all-positions`` dataset to ``dst``: byte for
    byte what ``sparrow data`` without ``--all-positions`` stores (used to report text-only
    storage without re-running a 25k-token prefill). Returns the new manifest."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    manifest = load_manifest(src)
    dst.mkdir(parents=True, exist_ok=True)
    new = json.loads(json.dumps(manifest))
    new["all_positions"] = False
    new["settings"]["all_positions"] = False
    for k, sh in manifest["shards"].items():
        if not sh.get("file"):
            continue
        samples = []
        for s in unpack(load_file(str(src / sh["file"]))):
            keep = s["text_index"] >= 0
            rs = int(keep[: s["response_start"]].sum())
            d = {key: s[key][keep] for key in ("ids", "greedy", "seq_pos", "text_index", "t_pos", "hidden")}
            d["response_start"] = torch.tensor([rs], dtype=torch.int32)
            samples.append(d)
        save_file(pack(samples), str(dst / sh["file"]))
        new["shards"][k].update(bytes=(dst / sh["file"]).stat().st_size,
                                rows=int(sum(len(x["ids"]) for x in samples)))
    _write_manifest(dst, new)
    return new
