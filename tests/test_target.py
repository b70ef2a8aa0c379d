"""The embedded targets (both families): exact SmolLM2 text stack, deterministic build;
Qwen2.5-VL: vLLM == transformers, mRoPE positions."""

import hashlib
import json

import pytest
import torch

from sparrow_vllm.families import FAMILY_NAMES, get_family
from sparrow_vllm.target import build as qwen_build
from sparrow_vllm.target import llava_onevision as llava_build
from sparrow_vllm.target.lora import (LoRALinear, add_lora, has_lora, load_lora_parts, lora_parts,
                                     merge_lora, without_lora)
from sparrow_vllm.target.smollm2 import load_smollm2

COMMITTED_PARTS = {"qwen2.5-vl": qwen_build.load_vision_parts, "llava-onevision": llava_build.load_vision_parts}
TARGET_DIR_FIXTURE = {"qwen2.5-vl": "target_dir", "llava-onevision": "llava_target_dir"}


def _assert_text_logits_equal_smollm2(adapter, parts):
    """Text-only logits of the assembled model == SmolLM2's own, with the parts' LoRA (if any)
    run unmerged on SmolLM2 (``LoRALinear`` wrappers): checks the mapping and the merge."""
    model, tokenizer, _ = adapter.build_model(parts)
    again = adapter.vision_parts_of(model)  # the vision parts go in and come out unchanged
    vision = without_lora(parts)
    assert again.keys() == vision.keys() and all(torch.equal(again[k], vision[k]) for k in vision)
    llama, _ = load_smollm2()
    if has_lora(parts):
        add_lora(llama.model, parts["lora.layers.0.self_attn.q_proj.down"].shape[0])
        load_lora_parts(llama.model, parts)
    msgs = [{"role": "user", "content": "Name three colours and a shape."}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., : llama.config.vocab_size]
        ref = llama(input_ids=ids).logits
    # merged W + up @ down vs unmerged W x + up (down x): fp32 rounding over 30 layers
    tol = 1e-3 if has_lora(parts) else 1e-5
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=tol)
    return ours, ids


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_only_logits_equal_smollm2(family):
    _assert_text_logits_equal_smollm2(get_family(family), COMMITTED_PARTS[family]())


def test_lora_is_merged_into_the_text_stack_at_build_time():
    """Random LoRA factors on every decoder linear: the built (merged) model equals SmolLM2
    running them unmerged, and differs from plain SmolLM2 (the factors are not ignored)."""
    adapter = get_family("qwen2.5-vl")
    parts = without_lora(COMMITTED_PARTS["qwen2.5-vl"]())
    llama, _ = load_smollm2()
    add_lora(llama.model, rank=2)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in llama.model.modules():
            if isinstance(m, LoRALinear):
                m.up.normal_(0, 0.02)
    factors = lora_parts(llama.model)
    assert len(factors) == 2 * 7 * llama.config.num_hidden_layers
    merged, ids = _assert_text_logits_equal_smollm2(adapter, {**parts, **factors})
    plain, _ = load_smollm2()
    with torch.no_grad():
        assert (merged - plain(input_ids=ids).logits).abs().max() > 1e-2


def test_lora_factors_that_do_not_fit_are_refused(tmp_path):
    lm = torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.ModuleDict(
        {"q_proj": torch.nn.Linear(8, 8), "other": torch.nn.Linear(8, 8)})])})
    add_lora(lm, rank=2)
    factors = lora_parts(lm)
    assert set(factors) == {"lora.layers.0.q_proj.down", "lora.layers.0.q_proj.up"}
    with pytest.raises(ValueError, match="rank 3 in the parts, 2 in the model"):
        load_lora_parts(lm, {k: torch.zeros(3, 8) if k.endswith("down") else torch.zeros(8, 3) for k in factors})
    with pytest.raises(KeyError, match="layers.0.k_proj"):
        merge_lora({"layers.0.q_proj.weight": torch.zeros(8, 8)},
                   {"lora.layers.0.k_proj.down": torch.zeros(2, 8), "lora.layers.0.k_proj.up": torch.zeros(8, 2)})
    with pytest.raises(ValueError, match="must be positive"):
        add_lora(lm, rank=0)
    # a continued target run needs the rank of the LoRA it continues
    from safetensors.torch import save_file

    from sparrow_vllm.target.train_vision import train_vision

    save_file(factors, str(tmp_path / "parts.safetensors"))
    with pytest.raises(ValueError, match="pass --lora-rank"):
        train_vision(tmp_path / "run", steps=1, init=tmp_path / "parts.safetensors")


def test_lora_rank_grows_exactly():
    """A continued run may give the LoRA more rank: at load the LM is exactly the parts', and
    the grown factors still merge into the same weights."""
    torch.manual_seed(0)
    make = lambda: torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.ModuleDict(  # noqa: E731
        {"q_proj": torch.nn.Linear(8, 8, bias=False)})])})
    small, big = make(), make()
    big.load_state_dict(small.state_dict())
    add_lora(small, rank=2)
    with torch.no_grad():
        small.layers[0].q_proj.up.normal_()
    factors = lora_parts(small)
    add_lora(big, rank=5)
    with pytest.raises(ValueError, match="rank 2 in the parts, 5 in the model"):
        load_lora_parts(big, factors)
    load_lora_parts(big, factors, grow=True)
    x = torch.randn(3, 8)
    torch.testing.assert_close(big.layers[0].q_proj(x), small.layers[0].q_proj(x))
    assert big.layers[0].q_proj.down[2:].abs().sum() > 0  # the new rows can learn
    base = {"layers.0.q_proj.weight": small.layers[0].q_proj.base.weight.detach()}
    torch.testing.assert_close(merge_lora(base, lora_parts(big)), merge_lora(base, factors))


def _digest(d):
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        h.update((d / name).read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_build_is_deterministic(family, request, tmp_path):
    again = get_family(family).build_target(tmp_path / "again")
    assert _digest(again) == _digest(request.getfixturevalue(TARGET_DIR_FIXTURE[family]))


@pytest.mark.vllm
def test_vllm_and_transformers_agree_on_a_video_answer(target_dir):
    """Also beyond 96 frames, where transformers' own mRoPE would continue the text after
    the video elsewhere than vLLM does (target/mrope.py): 128 frames moved sample 6."""
    from transformers import AutoProcessor

    from sparrow_vllm.harness.offline import run_engine_subprocess, world_prompt_specs
    from sparrow_vllm.target.build import load_hf_target
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    indices, frames = [0, 3, 6, 6], [64, 64, 128, 256]
    got = run_engine_subprocess({"target": str(target_dir), "prompts": world_prompt_specs("test", indices, frames),
                                 "sampling": {"max_tokens": 24}, "engine": {"max_model_len": 4096}})
    model = load_hf_target(target_dir)
    processor = AutoProcessor.from_pretrained(target_dir)
    for i, f, out in zip(indices, frames, got["outputs"]):
        s = make_sample("test", i, f)
        inputs = hf_inputs(processor, s.frames(), s.question)
        model.model.rope_deltas = None
        with torch.no_grad():
            ref = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        ref = ref.tolist()
        if processor.tokenizer.eos_token_id in ref:
            ref = ref[: ref.index(processor.tokenizer.eos_token_id) + 1]
        assert out["token_ids"] == ref, (f, out["text"], processor.tokenizer.decode(ref))


def test_mrope_text_after_a_long_video_continues_past_its_last_frame(target_dir):
    """vLLM's convention (target/mrope.py): equal to transformers' while the video is short,
    one past the last temporal position once that exceeds the spatial extent."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from sparrow_vllm.target.mrope import rope_index
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    processor = AutoProcessor.from_pretrained(target_dir)
    inner = Qwen2_5_VLForConditionalGeneration.from_pretrained(target_dir).model
    video_id = inner.config.video_token_id
    for frames in (16, 256):
        inputs = hf_inputs(processor, make_sample("test", 1, frames).frames(), "Describe the video.")
        kw = {k: inputs[k] for k in ("mm_token_type_ids", "video_grid_thw", "second_per_grid_ts")}
        ours, ours_delta = rope_index(inner, inputs["input_ids"], **kw)
        theirs, _ = type(inner).get_rope_index(inner, inputs["input_ids"], **kw)
        ids = inputs["input_ids"][0]
        last_video = int((ids == video_id).nonzero().max())
        after = ours[:, 0, last_video + 1]
        assert torch.equal(after, torch.full((3,), int(ours[:, 0, : last_video + 1].max()) + 1))
        assert int(ours_delta) == int(ours.max()) + 1 - len(ids)
        if frames == 16:
            assert torch.equal(ours, theirs)
        else:  # 128 temporal groups of 2 frames at 24 fps: temporal positions 0..10 > 3
            assert not torch.equal(ours, theirs)


def test_build_target_with_other_vision_parts_needs_an_out_dir(tmp_path, capsys):
    """A candidate's parts never overwrite the default (committed) target directory."""
    from sparrow_vllm.cli import main

    with pytest.raises(SystemExit, match="needs --out"):
        main(["build-target", "--vision-parts", str(tmp_path / "parts.safetensors")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["build-target", "--vision-parts", str(tmp_path / "parts.safetensors"), "--out", str(tmp_path / "t")])


def test_pack_parts_stores_float16_that_builds_in_float32(tmp_path):
    """`sparrow pack-parts`: a train-target output (fp32) in float16, half the bytes; the committed
    parts are such a file (packing their fp32 values again gives the same bytes), and every
    tensor is loaded back as fp32 for the assembly."""
    from safetensors.torch import load_file, save_file

    from sparrow_vllm.cli import main

    committed = qwen_build.ASSETS_DIR / qwen_build.VISION_PARTS
    stored = load_file(str(committed))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    loaded = qwen_build.load_vision_parts()
    assert all(v.dtype == torch.float32 and torch.equal(v, stored[k].float()) for k, v in loaded.items())
    save_file(loaded, str(tmp_path / "fp32.safetensors"))
    main(["pack-parts", str(tmp_path / "fp32.safetensors"), str(tmp_path / "packed.safetensors")])
    assert (tmp_path / "packed.safetensors").read_bytes() == committed.read_bytes()
    assert (tmp_path / "packed.safetensors").stat().st_size < 0.51 * (tmp_path / "fp32.safetensors").stat().st_size
    with pytest.raises(SystemExit, match="no such file"):
        main(["pack-parts", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors")])


def test_a_target_run_resumes_only_with_the_options_it_started_with(tmp_path):
    from sparrow_vllm.target.train_vision import train_vision

    (tmp_path / "run").mkdir()
    torch.save({"visual": {}, "lora": {"lora.layers.0.self_attn.q_proj.down": torch.zeros(2, 576)}, "heads": None,
                "step": 3}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="trained with the lora option"):
        train_vision(tmp_path / "run", steps=4)


def test_a_target_run_writes_snapshots_of_its_parts(tmp_path):
    """--snapshot-every N: the parts along the run, the last one the final parts (two real steps,
    with the grounding loss on: both clips ask about one object, so it is logged at each step);
    the run's options are kept for a resume."""
    from safetensors.torch import load_file

    from sparrow_vllm.target import train_vision as tv

    with pytest.raises(ValueError, match="snapshot_every must be >= 0"):
        tv.train_vision(tmp_path / "bad", steps=1, snapshot_every=-1)
    with pytest.raises(ValueError, match=r"grounding_layer must be in \[0, 30\)"):
        tv.train_vision(tmp_path / "bad", steps=1, grounding_weight=0.5, grounding_layer=30)
    final = tv.train_vision(tmp_path / "run", steps=2, accum=1, simulate_tokens=0, snapshot_every=1, log_every=1,
                            grounding_weight=0.5, grounding_layer=4, grounding_head=8)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(0 < r["grounding_loss"] < 20 for r in log)
    assert tv._grounding[0] is None  # the capture is off again after the run
    one, two, end = (load_file(str(p)) for p in
                     (tmp_path / "run" / "vision_parts-step1.safetensors",
                      tmp_path / "run" / "vision_parts-step2.safetensors", final))
    assert one.keys() == two.keys() == end.keys()
    assert all(torch.equal(two[k], end[k]) for k in end)
    assert any(not torch.equal(one[k], two[k]) for k in end)
    # The checkpoint records the run's options: a resume with another grounding head or more
    # steps (another schedule) is refused before any model is built, naming what changed.
    with pytest.raises(ValueError, match=r"steps 2 \(now 3\), grounding_head 8 \(now 1\)"):
        tv.train_vision(tmp_path / "run", steps=3, accum=1, simulate_tokens=0, grounding_weight=0.5,
                        grounding_layer=4, grounding_head=1)


def test_a_target_run_stops_at_a_step_of_its_schedule_and_resumes(tmp_path):
    """--stop-at N: N steps of the --steps schedule (its learning rate at N), parts written and
    checkpointed; the same call without it runs the rest."""
    from sparrow_vllm.target import train_vision as tv

    with pytest.raises(ValueError, match=r"stop_at must be in \[0, steps=2\]"):
        tv.train_vision(tmp_path / "bad", steps=2, stop_at=3)
    opts = dict(steps=3, accum=1, simulate_tokens=0, log_every=1)
    tv.train_vision(tmp_path / "run", stop_at=1, **opts)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 1
    tv.train_vision(tmp_path / "run", **opts)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[0]["lr"] > log[2]["lr"]  # one cosine schedule of 3 steps across both calls


def test_eval_target_sizes_its_kv_cache_by_the_run(target_dir):
    """eval-target asks vLLM for the KV cache its run can fill (SmolLM2: 30 layers x 3 KV heads x
    64 dims x k,v x fp32 = 46,080 bytes a token), in whole GiB, between 1 and 4."""
    from sparrow_vllm.target.evaluate import kv_cache_gib_for

    per_token = 30 * 3 * 64 * 2 * 4
    assert kv_cache_gib_for(target_dir, 1) == 1
    assert kv_cache_gib_for(target_dir, 2**30 // per_token) == 1
    assert kv_cache_gib_for(target_dir, 2**30 // per_token + 1) == 2
    assert kv_cache_gib_for(target_dir, 16 * (25_008 + 512)) == 4  # 16 videos of ~25k: capped


def test_long_all_turns_labels_every_answer_of_the_conversation(target_dir):
    """``--long-all-turns``: the whole conversation in one forward, each turn's reference answer
    (and its ``<|im_end|>``) labelled where it stands, nothing of the user turns."""
    import random

    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.train_vision import long_task_inputs
    from sparrow_vllm.world.story import make_long_sample

    family = get_family("qwen2.5-vl")
    processor = family.load_processor(target_dir)
    tok = processor.tokenizer
    multi = 0
    for seed in range(6):
        rng = random.Random(seed)
        state = rng.getstate()
        inputs = long_task_inputs(family, processor, rng, 7, all_turns=True)
        rng.setstate(state)
        task = rng.choice(("narrate", "chat", "stream"))
        sample = make_long_sample(task, "train", 7, 128 if task == "stream" else rng.choice((64, 128)))
        labels, ids = inputs["labels"][0], inputs["input_ids"][0]
        on = (labels != -100).int()
        runs = torch.nonzero(on.diff(prepend=torch.zeros(1, dtype=on.dtype)) == 1).flatten().tolist()
        ends = torch.nonzero(on.diff(append=torch.zeros(1, dtype=on.dtype)) == -1).flatten().tolist()
        said = [tok.decode(labels[a:b + 1]) for a, b in zip(runs, ends)]
        assert said == [t["answer"] + "<|im_end|>" for t in sample.turns]
        assert torch.equal(labels[labels != -100], ids[labels != -100])
        assert tok.decode(ids).count("<|vision_start|>") == sum(t["clip"] is not None for t in sample.turns)
        multi += len(sample.turns) > 1
    assert multi >= 2


def test_long_task_weights_draw_the_weighted_tasks_only(target_dir, tmp_path):
    """``--long-task-weights``: a long clip's task is drawn with the given weights (a weight 0
    never draws that task); bad weights stop with one line before any model is built."""
    import argparse
    import random

    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.cli import _task_weights
    from sparrow_vllm.target.train_vision import long_task_inputs, train_vision

    family = get_family("qwen2.5-vl")
    processor = family.load_processor(target_dir)
    assert _task_weights("narrate=1,chat=0,stream=0") == {"narrate": 1.0, "chat": 0.0, "stream": 0.0}
    turns = {}
    for only in ("narrate", "chat", "stream"):
        weights = {t: float(t == only) for t in ("narrate", "chat", "stream")}
        for seed in range(3):
            inputs = long_task_inputs(family, processor, random.Random(seed), 3, all_turns=True, task_weights=weights)
            text = processor.tokenizer.decode(inputs["input_ids"][0])
            turns.setdefault(only, set()).add((text.count("<|vision_start|>"), text.count("<|im_start|>assistant")))
    # a narration: one video, one answer; a chat: one video, 3-6 answers; a stream: a video a turn
    assert turns["narrate"] == {(1, 1)}
    assert all(v == 1 and 3 <= a <= 6 for v, a in turns["chat"])
    assert all(v == a > 1 for v, a in turns["stream"])
    for text in ("narrate", "recap=2", "narrate=-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _task_weights(text)
    for kwargs, msg in (({"long_task_weights": {"narrate": 0.0, "chat": 0.0, "stream": 0.0}, "long_share": 0.5},
                         "not all 0"),
                        ({"long_task_weights": {"narrate": 2.0}}, "give long_share")):
        with pytest.raises(ValueError, match=msg):
            train_vision(tmp_path / "run", steps=1, **kwargs)
    # the command says a wrong option in one line and leaves no run folder behind
    from sparrow_vllm.cli import main

    for argv, msg in ((["--long-task-weights", "narrate=2"], "give long_share"),
                      (["--long-share", "1.5"], "long_share must be in"),
                      (["--init", str(tmp_path / "none.safetensors")], "no such vision parts file")):
        with pytest.raises(SystemExit, match=f"^sparrow train-target: .*{msg}"):
            main(["train-target", "--out", str(tmp_path / "cli"), *argv])
    assert not (tmp_path / "cli").exists()


def test_long_task_turns_train_on_their_own_answer_after_the_reference_history(target_dir, tmp_path):
    """A long-task training clip (``--long-share``): the earlier turns' reference answers are in
    the prompt, one video per streamed clip, and only this turn's answer is labelled."""
    import random

    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.prompt import long_turn
    from sparrow_vllm.target.train_vision import long_task_inputs
    from sparrow_vllm.world.story import make_long_sample

    family = get_family("qwen2.5-vl")
    processor = family.load_processor(target_dir)
    tok = processor.tokenizer
    seen = set()
    for seed in range(12):
        rng = random.Random(seed)
        state = rng.getstate()
        inputs = long_task_inputs(family, processor, rng, 5)
        rng.setstate(state)  # the same draws, to know which turn it was
        task = rng.choice(("narrate", "chat", "stream"))
        frames = 128 if task == "stream" else rng.choice((64, 128))
        sample = make_long_sample(task, "train", 5, frames)
        turn = long_turn(sample, rng.randrange(len(sample.turns)))
        seen.add(task)
        labels = inputs["labels"][0]
        said = tok.decode(labels[labels != -100], skip_special_tokens=True).strip()
        assert said == turn["answer"]
        text = tok.decode(inputs["input_ids"][0])
        assert all(a in text for _, a in turn["history"])
        assert text.count("<|vision_start|>") == len(turn["videos"]) == len(turn["video_turns"])
        assert inputs["video_grid_thw"].shape[0] == len(turn["videos"])
    assert seen == {"narrate", "chat", "stream"}
    with pytest.raises(ValueError, match="long_share must be in"):
        from sparrow_vllm.target.train_vision import train_vision

        train_vision(tmp_path / "run", steps=1, long_share=1.5)
