"""Train an embedded target's vision parts on SparrowWorld, the LM frozen or LoRA-adapted; any family.

What is trained and committed is the family adapter's business (``vision_module``,
``vision_parts_of``): Qwen2.5-VL's tower + merger, LLaVA-OV's tower + projector + newline.
Run once (tens of minutes on 2 cores, in the background); the result is committed as
``assets/<embedded target>/vision_parts.safetensors`` and ``sparrow build-target`` assembles
from it::

    sparrow train-target --arch llava-onevision --out runs/target-llava --steps 180 --accum 3

Long videos on a short-clip budget (``simulate_tokens``). A frozen LM fed a long video
breaks mostly because its attention mass drains into thousands of visual tokens: the bias
below alone, on a 16-frame clip, reproduces the breakdown of a real 512-1024-frame clip
(somewhat harsher). SparrowWorld events scale with the video, so a 25k-token video is
roughly its 16-frame version with every frame repeated ~200 times. Adding ``log m`` to the
attention logit of every visual key is exactly attention over ``m`` copies of each visual token
(``long_video_attention``), so a short clip trains the tower as if it were ``m`` times
longer, at the short clip's cost: a real 4k-token step costs 50x a 128-token one here.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sparrow_vllm.target.config import PERCEPTION_LEVELS
from sparrow_vllm.target.packing import clip_questions, pack_questions
from sparrow_vllm.world import make_sample

VISION_PARTS = "vision_parts.safetensors"
LONG_VIDEO_ATTENTION = "sparrow_long_video"
# Share of training clips given a simulated length (the rest train at their real length).
SIMULATED_SHARE = 0.75

# Mostly short clips (cheap: the frozen 135M LM dominates the step), some longer ones so
# the model sees events spread over time.
FRAME_CHOICES = (16, 16, 16, 16, 32, 32, 64)
# Long-task clips (world/story.py; a stream needs >= 128 frames): 1-2 episodes, 0.5-1k visual tokens.
LONG_FRAME_CHOICES = (64, 128)


def long_task_inputs(adapter, processor, rng: random.Random, index: int, all_turns: bool = False,
                     task_weights: dict[str, float] | None = None):
    """Inputs of one long-task turn (task, length and turn drawn from ``rng``), the earlier
    turns teacher-forced with their reference answers, ``labels`` on this turn's answer; with
    ``all_turns`` the whole conversation, ``labels`` on every turn's answer (one forward trains
    all of a chat's or stream's turns: 3-6 answers for about the cost of the last one).
    ``task_weights``: draw the task with these weights (a task left out: 1; None: uniform)."""
    from sparrow_vllm.target.prompt import label_earlier_answers, long_turn
    from sparrow_vllm.world.story import LONG_TASKS, make_long_sample

    if task_weights:
        task = rng.choices(LONG_TASKS, [task_weights.get(t, 1.0) for t in LONG_TASKS])[0]
    else:
        task = rng.choice(LONG_TASKS)
    frames = 128 if task == "stream" else rng.choice(LONG_FRAME_CHOICES)
    sample = make_long_sample(task, "train", index, frames)
    last = len(sample.turns) - 1
    turn = long_turn(sample, last if all_turns else rng.randrange(len(sample.turns)))
    inputs = adapter.hf_inputs(processor, turn["videos"], turn["question"], turn["answer"], turn["history"],
                               turn["video_turns"])
    if all_turns:
        label_earlier_answers(inputs, processor.tokenizer, [a for _, a in turn["history"]])
    return inputs


class OptionError(ValueError):
    """An option of ``train_vision`` that cannot work (``sparrow train-target`` says it in one line)."""


def _load_parts(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise OptionError(f"--init {path}: no such vision parts file")
    return load_file(str(path))


# The per-visual-key logit bias of the current forward ([T] float) or None; set by train_vision.
_visual_key_bias: list[torch.Tensor | None] = [None]
# The grounding loss's capture (target/grounding.py) while train_vision runs with it, else None.
_grounding: list = [None]
# The packed questions' block of each position of the current forward ([T] long; 0 = the
# shared prefix; target/packing.py) or None; set by train_vision.
_key_blocks: list[torch.Tensor | None] = [None]


def long_video_attention(module, query, key, value, attention_mask, visual_key_bias=None, blocks=None, **kwargs):
    """transformers' SDPA attention with ``visual_key_bias [T_k]`` (``log m`` at visual keys,
    0 elsewhere) added to every logit: the same output as attention over ``m`` copies of each
    visual key/value. ``blocks [T_k]``: a position of block ``j > 0`` attends to block 0 (the
    shared prefix) and to block ``j`` only (packed questions). Causal; for training forwards
    (no padding, ``T_q == T_k``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _grounding[0] is not None:
        _grounding[0].capture(module, query, key)
    bias = visual_key_bias if visual_key_bias is not None else _visual_key_bias[0]
    blocks = blocks if blocks is not None else _key_blocks[0]
    if bias is None and blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.dtype == torch.bool and not attention_mask.all():
        raise ValueError("long-video simulation trains on unpadded single sequences")
    q_len, k_len = query.shape[2], key.shape[2]
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    if blocks is not None:
        bq, bk = blocks[k_len - q_len:k_len].to(query.device), blocks[:k_len].to(query.device)
        causal &= (bk[None, :] == 0) | (bk[None, :] == bq[:, None])
    if bias is None:
        bias = torch.zeros(k_len, device=query.device)
    mask = torch.where(causal, bias[:k_len].to(query.dtype)[None, :],
                       torch.tensor(float("-inf"), dtype=query.dtype, device=query.device))
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, mask[None, None], is_causal=False, **kwargs)


def use_long_video_attention(text_config) -> None:
    """Route the LM's attention through ``long_video_attention`` (registered once)."""
    from transformers import AttentionInterface

    AttentionInterface.register(LONG_VIDEO_ATTENTION, long_video_attention)
    text_config._attn_implementation = LONG_VIDEO_ATTENTION


def simulated_repeats(rng: random.Random, visual_tokens: int, simulate_tokens: int) -> float:
    """``m`` for one clip: 1 for a share of clips, else log-uniform up to a simulated length of
    ``simulate_tokens`` visual tokens."""
    top = simulate_tokens / max(1, visual_tokens)
    if top <= 1 or rng.random() >= SIMULATED_SHARE:
        return 1.0
    return math.exp(rng.uniform(0.0, math.log(top)))


def stretched_positions(position_ids: torch.Tensor, is_visual: torch.Tensor, m: float) -> torch.Tensor:
    """Plain 1-D ``position_ids [1, L]`` of a clip as its video ``m`` times longer would place
    them: visual token ``i`` of a block at the block's start + ``i * m``, every later position
    moved on by ``m - 1`` per visual token before it (float positions; RoPE takes them). With the
    ``log m`` bias a text query then reads each visual token as ``m`` copies at the distances a
    real long video puts them (the first copy's rotation standing for all). ``is_visual [L]``;
    packed blocks (positions restarting after the video) move with the text they follow."""
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError("stretched positions are for plain 1-D positions (not mRoPE)")
    visual = torch.sort(position_ids[0, is_visual]).values
    return position_ids + (m - 1.0) * torch.searchsorted(visual, position_ids)


def cosine_with_warmup(opt, steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(steps, 1)))))


def train_vision(out_dir: Path, steps: int = 1500, lr: float = 2e-3, accum: int = 4, seed: int = 0,
                 log_every: int = 25, init: Path | None = None, family: str = "qwen2.5-vl",
                 simulate_tokens: int = 0, lora_rank: int = 0, lora_lr: float = 5e-4,
                 perception_weight: float = 0.0, perception_steps: int = 0, perception_batch: int = 16,
                 perception_level: str = "token", perception_tower_lr: float = 0.0, perception_hold: float = 0.0,
                 snapshot_every: int = 0, grounding_weight: float = 0.0, grounding_layer: int = 19,
                 grounding_head: int = 1, questions_per_clip: int = 1, long_share: float = 0.0,
                 long_all_turns: bool = False, long_task_weights: dict[str, float] | None = None,
                 simulate_positions: bool = False, stop_at: int = 0) -> Path:
    """``init``: start from these vision parts (a previous run) instead of a random tower.
    ``family``: whose embedded target (``qwen2.5-vl``, ``llava-onevision``).
    ``simulate_tokens``: train clips as if up to this many visual tokens long (0: off);
    ``simulate_positions``: the positions too (``stretched_positions``; families with plain 1-D
    positions, where a long video moves the text thousands of positions on).
    ``lora_rank``: also adapt the LM with a LoRA of this rank (learning rate ``lora_lr``),
    committed with the vision parts and merged at build time (``target/lora.py``; 0: LM frozen);
    with an ``init`` that has LoRA factors, at least their rank (a higher one grows them).
    ``perception_weight``: add this times the per-token identity/colour loss of
    ``target/perception.py`` to the LM loss; ``perception_steps``: first fit that loss's heads
    alone on the tower as it is (tower frozen, tower-only forwards, ``perception_batch`` clips a
    step). ``perception_level``: ``token`` (each merged token's labels), ``object`` (each
    object's tokens pooled, ``perception.object_instances``) or ``object-motion`` (and a head for
    the way it moves within the patch); ``perception_tower_lr`` > 0: train
    the tower (and merger) during those ``perception_steps`` too, at this learning rate (a
    perception stage before the LM stage; with ``steps`` 0, that stage alone); ``perception_hold``:
    keep the tower's tokens near what they were before that stage, this times their relative
    squared distance (``perception.warm_up_heads``). ``object-motion``
    needs tokens of 2 frames or more (Qwen2.5-VL; a LLaVA-OV token shows one frame).
    ``stop_at``: stop after this LM step of the ``steps``-step schedule (its learning rate where
    that schedule has it; checkpointed, so the same call without it resumes; 0: run them all).
    ``snapshot_every``: also write the parts every this many LM steps, as
    ``vision_parts-step<N>.safetensors`` (a few MB each; ``build-target --vision-parts`` reads
    them), to measure answers along the run without pausing it (0: only the final parts).
    ``grounding_weight``: add this times the attention loss of ``target/grounding.py`` (head
    ``grounding_head`` of LM layer ``grounding_layer`` looks at the object the question is about)
    to the LM loss. ``questions_per_clip``: train on up to this many questions about each clip in
    one forward (the clip's own and one of each other kind its scene answers, each seeing only
    the video and itself: ``target/packing.py``; 1: the clip's own question only).
    ``long_share``: this share of the clips are turns of the long tasks instead (narrate, chat,
    stream: ``long_task_inputs``; no perception, grounding or packing on those).
    ``long_all_turns``: a long-task clip is its whole conversation, every answer in the loss
    (else one random turn). ``long_task_weights``: draw a long clip's task with these weights
    (``{"narrate": 2}``: twice as many narrations; a task left out: 1; None: uniform)."""
    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.lora import add_lora, has_lora, load_lora_parts, lora_parts, without_lora

    adapter = get_family(family)
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)
    out_dir = Path(out_dir)

    if (perception_weight or perception_steps) and perception_level == "object-motion" and adapter.frames_per_token < 2:
        raise OptionError(f"perception level object-motion reads motion within a visual token; a {adapter.name} token "
                         "shows one frame: use --perception-level object")
    if steps < 0 or (steps == 0 and not perception_tower_lr):
        raise OptionError(f"steps must be > 0 (0 only for a perception stage alone), got {steps}")
    if perception_tower_lr and not perception_steps:
        raise OptionError("perception_tower_lr trains the tower during the perception steps: give perception_steps")
    if perception_hold < 0 or (perception_hold and not perception_tower_lr):
        raise OptionError("perception_hold keeps the tower near its start while the perception stage trains it: "
                         "give perception_tower_lr (and a hold >= 0)")
    if grounding_weight < 0:
        raise OptionError(f"grounding_weight must be >= 0, got {grounding_weight}")
    if questions_per_clip < 1:
        raise OptionError(f"questions_per_clip must be >= 1, got {questions_per_clip}")
    if questions_per_clip > 1 and grounding_weight:
        raise OptionError("questions_per_clip > 1 does not combine with the grounding loss (it reads one question's "
                         "answer)")
    if not 0 <= long_share <= 1:
        raise OptionError(f"long_share must be in [0, 1], got {long_share}")
    if long_task_weights is not None:
        from sparrow_vllm.world.story import LONG_TASKS

        unknown = sorted(set(long_task_weights) - set(LONG_TASKS))
        if unknown:
            raise OptionError(f"long_task_weights: unknown task {unknown[0]!r}; expected one of "
                             + ", ".join(LONG_TASKS))
        weights = [long_task_weights.get(t, 1.0) for t in LONG_TASKS]
        if min(weights) < 0 or not sum(weights) > 0:
            raise OptionError(f"long_task_weights must be >= 0 and not all 0, got {long_task_weights}")
        if not long_share:
            raise OptionError("long_task_weights weighs the long tasks' clips: give long_share")
    if simulate_positions and not simulate_tokens:
        raise OptionError("simulate_positions stretches a simulated length: give simulate_tokens")
    if simulate_positions and adapter.compressed_video_positions:
        raise OptionError(f"simulate_positions is for plain 1-D positions; {adapter.name}'s video positions are "
                         "compressed, so a video's text positions stay close")
    if not 0 <= stop_at <= steps:
        raise OptionError(f"stop_at must be in [0, steps={steps}], got {stop_at}")
    if snapshot_every < 0:
        raise OptionError(f"snapshot_every must be >= 0, got {snapshot_every}")
    if perception_level not in PERCEPTION_LEVELS:
        raise OptionError(f"perception_level must be one of {', '.join(PERCEPTION_LEVELS)}, not {perception_level!r}")
    ckpt = out_dir / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False) if ckpt.exists() else None
    for option, key in ((lora_rank, "lora"), (perception_weight or perception_steps, "heads")):
        if state is not None and bool(option) != bool(state.get(key)):
            raise OptionError(f"{ckpt} was trained {'without' if option else 'with'} the {key} option; "
                             "resume it with the options it started with, or give another --out")
    if state is not None and state.get("heads") and state.get("perception_level", "token") != perception_level:
        raise OptionError(f"{ckpt} was trained with perception level {state.get('perception_level', 'token')!r}; "
                         "resume it with the options it started with, or give another --out")
    # What a resumed run must share with the run that wrote the checkpoint (older checkpoints
    # lack the record and are checked by the two tests above only).
    options = {"steps": steps, "lr": lr, "accum": accum, "seed": seed, "simulate_tokens": simulate_tokens,
               "lora_rank": lora_rank, "lora_lr": lora_lr, "perception_weight": perception_weight,
               "grounding_weight": grounding_weight, "grounding_layer": grounding_layer,
               "grounding_head": grounding_head, "questions_per_clip": questions_per_clip}
    if long_share:  # older checkpoints lack it: a run without long tasks resumes them
        options["long_share"] = long_share
    if long_all_turns:
        options["long_all_turns"] = True
    if long_task_weights:
        options["long_task_weights"] = dict(long_task_weights)
    if simulate_positions:
        options["simulate_positions"] = True
    changed = {k: (v, options[k]) for k, v in (state or {}).get("options", {}).items() if options.get(k) != v}
    if changed:
        raise OptionError(f"{ckpt} was trained with other options: "
                         + ", ".join(f"{k} {a} (now {b})" for k, (a, b) in changed.items())
                         + "; resume it with the options it started with, or give another --out")
    init_parts = _load_parts(init) if init else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if has_lora(init_parts) and not lora_rank:
        raise OptionError(f"--init {init} has LoRA factors: pass --lora-rank (their rank) to continue them")
    model, tokenizer, processor = adapter.build_model(without_lora(init_parts), seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    visual = adapter.vision_module(model)
    for p in visual.parameters():
        p.requires_grad_(True)
    params = [p for p in visual.parameters()]
    groups = [{"params": params, "lr": lr}]
    lm = model.model.language_model  # both families' decoder (SmolLM2's layers)
    if lora_rank:
        lora_params = add_lora(lm, lora_rank)
        if has_lora(init_parts):  # lora_rank may exceed the init's: more capacity for a continued run
            load_lora_parts(lm, init_parts, grow=True)
        groups.append({"params": lora_params, "lr": lora_lr})
        params = params + lora_params
    heads, captured = None, [None]
    if perception_weight or perception_steps:
        from sparrow_vllm.target import perception

        hidden = adapter.text_config(model.config).hidden_size
        if perception_level == "token":
            heads, labels_of = perception.PerceptionHeads(hidden), perception.token_labels
        else:
            heads = perception.ObjectHeads(hidden, motion=perception_level == "object-motion")
            labels_of = perception.object_instances
        labels_of = functools.partial(labels_of, frames_per_token=adapter.frames_per_token)
        groups.append({"params": list(heads.parameters()), "lr": lr})
        adapter.capture_video_tokens(model, captured)
    visual_ids = torch.tensor(adapter.visual_token_ids(model.config))
    grounding = None
    if grounding_weight:
        from sparrow_vllm.target.grounding import Grounding, subject_tokens

        if adapter.name != "qwen2.5-vl":
            raise OptionError("the grounding loss follows Qwen2.5-VL's visual token layout; not for " + adapter.name)
        text = adapter.text_config(model.config)
        if not 0 <= grounding_layer < text.num_hidden_layers:
            raise OptionError(f"grounding_layer must be in [0, {text.num_hidden_layers}), got {grounding_layer}")
        if not 0 <= grounding_head < text.num_attention_heads:
            raise OptionError(f"grounding_head must be in [0, {text.num_attention_heads}), got {grounding_head}")
        grounding = Grounding(grounding_layer, grounding_head)
    if simulate_tokens or grounding is not None or questions_per_clip > 1:
        use_long_video_attention(adapter.text_config(model.config))
    opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, steps, warmup=max(1, steps // 20))
    start, resumed = 0, state is not None
    if resumed:
        visual.load_state_dict(state["visual"])
        if heads is not None:
            heads.load_state_dict(state["heads"])
        if lora_rank:
            load_lora_parts(lm, state["lora"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        print(f"resumed at step {start}")
    del state
    # A continued run (init) sees other clips than the first one.
    rng = random.Random(seed * 1_000_003 + start + (7919 if init else 0))
    log = open(out_dir / "train_log.jsonl", "a")
    if perception_steps and not resumed:  # a resumed run has done its warm-up
        from sparrow_vllm.target.perception import warm_up_heads

        def sample_at(step, i):  # clips apart from the LM stage's
            return make_sample("train", 600_000 + (step * perception_batch + i) % 250_000, rng.choice(FRAME_CHOICES))

        for rec in warm_up_heads(model, adapter, processor, heads, perception_steps, perception_batch, 1e-2,
                                 sample_at, labels_of, tower_lr=perception_tower_lr, tower_hold=perception_hold):
            log.write(json.dumps(rec) + "\n")
        log.flush()
        torch.save({"visual": visual.state_dict(), "heads": heads.state_dict(), "lora": lora_parts(lm),
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "step": 0,
                    "perception_level": perception_level, "options": options}, ckpt)
    model.train()
    running, by_length, seen, grounded = [], {"real": [], "simulated": [], "long": []}, [], []
    t0 = time.time()
    _grounding[0] = grounding
    for step in tqdm(range(start, stop_at or steps), initial=start, total=steps, desc="train vision"):
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(accum):
            # other seeds see other clips (seed 0 as before)
            idx = (step * accum + micro + (100_000 if init else 0) + seed * 200_000) % 900_000
            extra, is_long = {}, long_share and rng.random() < long_share
            if is_long:
                inputs = long_task_inputs(adapter, processor, rng, idx, long_all_turns, long_task_weights)
                sample = None
            else:
                sample = make_sample("train", idx, rng.choice(FRAME_CHOICES))
                inputs = adapter.hf_inputs(processor, sample.frames(), sample.question, sample.answer)
            if questions_per_clip > 1 and not is_long:
                inputs, extra["position_ids"], _key_blocks[0] = pack_questions(
                    adapter, model, processor, inputs, clip_questions(sample, questions_per_clip))
            m = 1.0
            is_visual = torch.isin(inputs["input_ids"][0], visual_ids)
            if simulate_tokens:
                m = simulated_repeats(rng, int(is_visual.sum()), simulate_tokens)
                _visual_key_bias[0] = is_visual.float() * math.log(m)
                if simulate_positions and m != 1.0:
                    base = extra.get("position_ids")
                    base = adapter.position_ids(model, inputs) if base is None else base
                    extra["position_ids"] = stretched_positions(base, is_visual, m)
            try:
                out = model(**inputs, **extra)
                loss = out.loss
                if heads is not None and not is_long:
                    perceived = heads(captured[0], labels_of(sample))
                    loss = loss + perception_weight * perceived["loss"]
                    seen.append({k: float(v.detach()) for k, v in perceived.items()})
                subject = subject_tokens(sample) if grounding is not None and not is_long else None
                if subject is not None:
                    looked = grounding.loss(is_visual, subject, inputs["labels"][0], _visual_key_bias[0])
                    loss = loss + grounding_weight * looked
                    grounded.append(float(looked.detach()))
                (loss / accum).backward()
            finally:
                _visual_key_bias[0] = _key_blocks[0] = None
            loss_sum += out.loss.item() / accum
            by_length["long" if is_long else "real" if m == 1.0 else "simulated"].append(out.loss.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss_sum)
        if (step + 1) % log_every == 0 or step + 1 in (steps, stop_at):
            rec = {"step": step + 1, "loss": sum(running) / len(running), "lr": sched.get_last_lr()[0],
                   "elapsed_s": round(time.time() - t0, 1)}
            if simulate_tokens or long_share:
                rec.update({f"loss_{k}": sum(v) / len(v) for k, v in by_length.items() if v})
            if seen:
                rec.update({f"perception_{k}": float(np.nanmean([x[k] for x in seen])) for k in seen[0]})
            if grounded:
                rec["grounding_loss"] = sum(grounded) / len(grounded)
            running, by_length, seen, grounded = [], {"real": [], "simulated": [], "long": []}, [], []
            log.write(json.dumps(rec) + "\n")
            log.flush()
            tqdm.write(json.dumps(rec))
            torch.save({"visual": visual.state_dict(), "lora": lora_parts(lm), "opt": opt.state_dict(),
                        "heads": heads.state_dict() if heads is not None else None,
                        "sched": sched.state_dict(), "step": step + 1, "perception_level": perception_level,
                        "options": options}, ckpt)
        if snapshot_every and (step + 1) % snapshot_every == 0:
            _save_parts(adapter, model, lm, out_dir / f"vision_parts-step{step + 1}.safetensors")
    _grounding[0] = None
    return _save_parts(adapter, model, lm, out_dir / VISION_PARTS)


def _save_parts(adapter, model, lm, path: Path) -> Path:
    """What is committed of a run: the family's vision parts and the LoRA factors, if any."""
    from safetensors.torch import save_file

    from sparrow_vllm.target.lora import lora_parts

    save_file({**adapter.vision_parts_of(model), **lora_parts(lm)}, str(path))
    return path


if __name__ == "__main__":  # ``sparrow train-target``, its options and defaults
    import sys

    from sparrow_vllm.cli import main

    sys.exit(main(["train-target", *sys.argv[1:]]))
