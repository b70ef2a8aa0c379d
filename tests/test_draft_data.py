"""`sparrow data` on a tiny random Qwen2.5-VL; training (seeded, resumable) and eval-draft on it."""

from __future__ import annotations

import json

import pytest
import torch

from draft_factory import write_tiny_target
from sparrow_vllm.draft.data import (DataMismatchError, DataSpec, generate_dataset, load_manifest,
                                     load_samples)

FRAMES = 16


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return write_tiny_target(tmp_path_factory.mktemp("target"), 0)


def spec(**kw):
    base = dict(split="train", n=5, num_frames=FRAMES, layers=[1, 2, 3], all_positions=True,
                max_new_tokens=4, shard_size=2)
    base.update(kw)
    return DataSpec(**base)


def _tensors(d):
    from safetensors.torch import load_file

    m = load_manifest(d)
    return m, {k: load_file(str(d / s["file"])) for k, s in m["shards"].items()}


@pytest.fixture(scope="module")
def full_data(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    generate_dataset(target, out, spec(), progress=False)
    return out


def test_resume_after_interrupt_is_identical(target, full_data, tmp_path):
    out = tmp_path / "resumed"
    m = generate_dataset(target, out, spec(), progress=False, stop_after_shards=1)
    assert list(m["shards"]) == ["0"]
    # a half-written shard left behind by a crash: a temp file and an unlisted shard file
    (out / "shard-00001.safetensors.tmp").write_bytes(b"garbage")
    (out / "shard-00001.safetensors").write_bytes(b"garbage")
    generate_dataset(target, out, spec(), progress=False)
    generate_dataset(target, out, spec(), progress=False)  # a third run finds nothing to do
    m1, t1 = _tensors(full_data)
    m2, t2 = _tensors(out)
    assert [s["samples"] for s in m1["shards"].values()] == [s["samples"] for s in m2["shards"].values()]
    ids = [i for s in m2["shards"].values() for i in s["samples"]]
    assert len(ids) == len(set(ids)) == 5
    for k in t1:
        for name in t1[k]:
            assert torch.equal(t1[k][name], t2[k][name]), (k, name)


def test_mismatched_settings_or_target_is_refused(target, full_data, tmp_path):
    with pytest.raises(DataMismatchError, match="other settings"):
        generate_dataset(target, full_data, spec(max_new_tokens=8), progress=False)
    other = write_tiny_target(tmp_path / "other", 1)
    with pytest.raises(DataMismatchError, match="target"):
        generate_dataset(other, full_data, spec(), progress=False)


def test_stored_states_are_the_targets_layer_inputs(target, full_data):
    """Rows equal HF hidden_states[l] of one forward over prompt + the greedy answer."""
    from transformers import AutoProcessor

    from sparrow_vllm.target.build import load_hf_target
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    model = load_hf_target(target)
    proc = AutoProcessor.from_pretrained(str(target))
    _, samples = load_samples(full_data, limit=1)
    s = samples[0]
    sm = make_sample("train", 0, FRAMES)
    inputs = hf_inputs(proc, sm.frames(), sm.question)
    plen = inputs["input_ids"].shape[1]
    assert s["response_start"] == plen and len(s["ids"]) == plen + 4
    assert torch.equal(s["ids"][:plen].long(), inputs["input_ids"][0])
    inputs["input_ids"] = s["ids"].long()[None]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:  # mRoPE needs the modality of every position
        mm = torch.zeros_like(inputs["input_ids"])
        mm[inputs["input_ids"] == model.config.video_token_id] = 2
        mm[inputs["input_ids"] == model.config.image_token_id] = 1
        inputs["mm_token_type_ids"] = mm
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    for a, l in enumerate([1, 2, 3]):
        ref = out.hidden_states[l][0, :-1]  # the final token's state is never computed
        torch.testing.assert_close(s["hidden"][:-1, a].float(), ref, atol=2e-2, rtol=1e-2)
    greedy = out.logits[0].argmax(-1)
    assert torch.equal(s["greedy"][plen - 1:-1].long(), greedy[plen - 1:-1])
    assert (s["greedy"][:plen - 1] == -1).all()
    video = (s["ids"] == model.config.video_token_id)
    assert (s["text_index"][video] == -1).all() and int(video.sum()) == 8 * FRAMES


def test_text_only_storage_does_not_grow_with_video(target, tmp_path):
    rows = {}
    for frames in (16, 64):
        for allpos in (False, True):
            m = generate_dataset(target, tmp_path / f"{frames}-{allpos}",
                                 spec(n=1, num_frames=frames, all_positions=allpos), progress=False)
            rows[frames, allpos] = m["shards"]["0"]["rows"]
    assert rows[16, False] == rows[64, False]
    assert rows[64, True] - rows[16, True] == 8 * (64 - 16)


def _train_args(data, out, **kw):
    from sparrow_vllm.draft.train import TrainArgs

    base = dict(data=str(data), out=str(out), anchor_layers=[2], window=8, mtp_depth=2, intermediate_size=32,
                draft_vocab=64, steps=4, batch_size=2, warmup=1, eval_every=2, ckpt_every=100,
                val_data=str(data), progress=False)
    base.update(kw)
    return TrainArgs(**base)


@pytest.mark.parametrize("recipe", ["sparrow", "eagle3"])
def test_train_seeded_resumable_and_evaluable(full_data, target, tmp_path, recipe):
    from safetensors.torch import load_file

    from sparrow_vllm.draft.evaluate import run_eval
    from sparrow_vllm.draft.train import train

    anchors = [2] if recipe == "sparrow" else [1, 2, 3]
    train(_train_args(full_data, tmp_path / "a", recipe=recipe, anchor_layers=anchors), log=lambda *_: None)
    train(_train_args(full_data, tmp_path / "b", recipe=recipe, anchor_layers=anchors, stop_after=2),
          log=lambda *_: None)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    train(_train_args(full_data, tmp_path / "b", recipe=recipe, anchor_layers=anchors, resume=True),
          log=lambda *_: None)
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # re-running a finished run re-exports it unchanged: the final validation is not lost
    final = json.loads((tmp_path / "b" / "training.json").read_text())["final"]
    assert "acc@1" in final
    train(_train_args(full_data, tmp_path / "b", recipe=recipe, anchor_layers=anchors, resume=True),
          log=lambda *_: None)
    assert json.loads((tmp_path / "b" / "training.json").read_text())["final"] == final
    assert torch.equal(load_file(str(tmp_path / "b" / "model.safetensors"))[next(iter(wb))], wb[next(iter(wb))])
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["speculators_model_type"] == recipe and cfg["eagle_aux_hidden_state_layer_ids"] == anchors
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and "acc@2" in log[-1]
    rep = run_eval(target, tmp_path / "a", full_data, [1, 3], progress=False)
    for k in ("1", "3"):
        r = rep["results"][k]
        assert r["rounds"] > 0 and 1.0 <= r["tau"] <= int(k) + 1
        # the per-sample rounds are the ones the summary averages
        rounds = [a for s in rep["per_sample"] for a in s["accepted"][k]]
        assert len(rounds) == r["rounds"] and sum(rounds) == r["accepted"]
    manifest, samples = load_samples(full_data)
    assert [s["id"] for s in rep["per_sample"]] == [s["id"] for s in samples]
    # the cap the answers were generated under: how reports tell runaway answers apart
    assert rep["max_new_tokens"] == manifest["settings"]["max_new_tokens"]
    assert all(s["to_generate"] <= rep["max_new_tokens"] - 1 for s in rep["per_sample"])
    # text rows before each answer: the prompt's text, never its visual rows
    assert all(0 < r["text_before"] < s["response_start"] for r, s in zip(rep["per_sample"], samples))
    # `sparrow eval-draft` without --target evaluates on the target the data was extracted from
    from sparrow_vllm.cli import main

    main(["eval-draft", "--draft", str(tmp_path / "a"), "--data", str(full_data), "--k", "1", "3",
          "--out", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text())["results"] == rep["results"]
    # a draft/data mismatch is refused with the fix in the message
    if recipe == "eagle3":
        text_only = tmp_path / "text"
        generate_dataset(target, text_only, spec(n=2, all_positions=False, layers=[2]), progress=False)
        with pytest.raises(DataMismatchError, match="--all-positions"):
            train(_train_args(text_only, tmp_path / "c", recipe="eagle3", anchor_layers=[2]), log=lambda *_: None)
        with pytest.raises(SystemExit, match="^sparrow eval-draft: ") as e:  # one line, no traceback
            main(["eval-draft", "--draft", str(tmp_path / "a"), "--data", str(text_only)])
        assert "\n" not in str(e.value)
        with pytest.raises(DataMismatchError, match="--layers"):
            train(_train_args(text_only, tmp_path / "c", anchor_layers=[1]), log=lambda *_: None)


def test_text_only_copy_equals_text_only_extraction(target, full_data, tmp_path):
    from sparrow_vllm.draft.data import text_only_copy

    generate_dataset(target, tmp_path / "direct", spec(all_positions=False), progress=False)
    text_only_copy(full_data, tmp_path / "copy")
    m1, t1 = _tensors(tmp_path / "direct")
    m2, t2 = _tensors(tmp_path / "copy")
    assert m1["settings"] == m2["settings"]
    for k in t1:
        assert t1[k].keys() == t2[k].keys()
        for name in t1[k]:
            assert torch.equal(t1[k][name], t2[k][name]), (k, name)


def test_train_on_several_datasets_of_one_target(target, full_data, tmp_path):
    """Short and long videos mixed (`sparrow train --data A B`); a dataset of another target
    is refused."""
    from dataclasses import replace

    from sparrow_vllm.draft.train import train

    def args(dirs, out):
        return replace(_train_args(dirs[0], out), data=[str(d) for d in dirs])

    longer = tmp_path / "32f"
    generate_dataset(target, longer, spec(n=2, num_frames=32), progress=False)
    train(args([full_data, longer], tmp_path / "mixed"), log=lambda *_: None)
    info = json.loads((tmp_path / "mixed" / "training.json").read_text())
    assert info["train_samples"] == 5 + 2
    assert info["train_rows"] > 0 and info["train_state_bytes"] > 0
    # data-parallel: every batch is split over the workers, so a one-sample dataset is refused
    from sparrow_vllm.draft.train import prepare_run, train_loop

    single = tmp_path / "single"
    generate_dataset(target, single, spec(n=1, num_frames=32), progress=False)
    a = args([full_data, single], tmp_path / "ddp")

    class NoCheckpoint:
        def load(self):
            return None

    with pytest.raises(ValueError, match="batch of 1 samples, fewer than the 2 workers"):
        train_loop(a, prepare_run(a), NoCheckpoint(), log=lambda *_: None, world_size=2)
    other = write_tiny_target(tmp_path / "other", 1)
    foreign = tmp_path / "foreign"
    generate_dataset(other, foreign, spec(n=1), progress=False)
    with pytest.raises(DataMismatchError, match="target"):
        train(args([full_data, foreign], tmp_path / "bad"), log=lambda *_: None)


def test_epoch_batches_keep_datasets_apart():
    """A mixed run's batches never mix datasets (no short clip padded to a long video's rows),
    cover each dataset once per epoch up to a remainder, depend only on (seed, epoch), and
    with one dataset are the chunks of one permutation (the single-dataset order)."""
    import numpy as np

    from sparrow_vllm.draft.train import epoch_batches

    sources = [0] * 20 + [1] * 5 + [2] * 9
    batches = epoch_batches(sources, 4, seed=3, epoch=1)
    assert all(len({sources[i] for i in b}) == 1 for b in batches)
    assert [len(b) for b in batches] == [4] * (5 + 1 + 2)  # full batches; remainders wait
    seen = np.concatenate(batches)
    assert len(set(seen.tolist())) == len(seen)
    assert sum(sources[i] == 0 for i in seen) == 20
    assert [b.tolist() for b in batches] == [b.tolist() for b in epoch_batches(sources, 4, 3, 1)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in epoch_batches(sources, 4, 3, 2)]
    firsts = [[sources[b[0]] for b in epoch_batches(sources, 4, 3, e)] for e in range(4)]
    assert any(f != sorted(f) for f in firsts)  # the datasets' batches are interleaved
    small = epoch_batches([0] * 3 + [1] * 8, 4, seed=0, epoch=0)
    assert sorted(len(b) for b in small) == [3, 4, 4]
    one = epoch_batches([0] * 10, 4, seed=5, epoch=2)
    order = np.random.default_rng([5, 2]).permutation(10)
    assert [b.tolist() for b in one] == [order[:4].tolist(), order[4:8].tolist()]


def test_storage_budget_keeps_the_mix_and_counts_the_rows_each_recipe_reads(target, full_data, tmp_path):
    """`sparrow train --storage-mb`: the samples whose anchor states fit, datasets in their
    share; EAGLE-3 stores every row, so one budget holds fewer of its samples than Sparrow's."""
    from dataclasses import replace

    from sparrow_vllm.draft.train import prepare_run, state_bytes, within_budget

    def seq(source, rows):
        return {"source": source, "hidden": torch.zeros(rows, 3)}

    seqs = [seq(0, 100)] * 6 + [seq(1, 300)] * 2  # both datasets 600 rows, 3,600 B
    assert state_bytes(seqs[0]) == 100 * 3 * 2
    assert within_budget(seqs, 7200) == list(range(8))
    half = within_budget(seqs, 3600)
    assert [seqs[i]["source"] for i in half] == [0, 0, 0, 1]  # 1,800 B of each
    assert within_budget(seqs, 599) == []

    more = tmp_path / "32f"
    generate_dataset(target, more, spec(n=2, num_frames=32), progress=False)
    lines = []

    def run(recipe, mb):
        a = replace(_train_args(full_data, tmp_path / recipe), data=[str(full_data), str(more)],
                    recipe=recipe, anchor_layers=[1, 3], storage_mb=mb)
        return prepare_run(a, log=lines.append).seqs

    sparrow_all, eagle_all = run("sparrow", None), run("eagle3", None)
    assert len(sparrow_all) == len(eagle_all) == 7
    budget = sum(map(state_bytes, sparrow_all)) / 1e6
    assert sum(map(state_bytes, eagle_all)) / 1e6 > 2 * budget  # every visual row stored
    assert len(run("sparrow", budget)) == 7
    eagle = run("eagle3", budget)
    assert 0 < len(eagle) < 7 and sum(map(state_bytes, eagle)) <= budget * 1e6
    assert all(torch.equal(s["ids"], t["ids"]) for s, t in zip(eagle, eagle_all))  # in the data's order
    assert lines[-1].startswith(f"storage budget {budget:g} MB: {len(eagle)} samples")
    with pytest.raises(ValueError, match="not one sample"):
        run("eagle3", 1e-6)
    from sparrow_vllm.cli import main

    with pytest.raises(SystemExit, match="^sparrow train: --storage-mb 1e-06: not one sample") as e:
        main(["train", "--data", str(full_data), "--out", str(tmp_path / "cli"), "--recipe", "eagle3",
              "--anchor-layers", "1,3", "--storage-mb", "1e-6"])
    assert "\n" not in str(e.value)


def test_repeated_answers_are_forced_and_labelled_by_the_target(target_dir, target, tmp_path):
    """`--repeat-answers 3` on the embedded target: the response rows are its greedy answer
    repeated three times (capped); states and labels are those of one forward over them
    (labels = the target's own argmax, not the next forced token); eval-draft refuses the data."""
    from transformers import AutoProcessor

    from draft_factory import write_random_draft
    from sparrow_vllm.draft.data import extract_sample
    from sparrow_vllm.draft.evaluate import run_eval
    from sparrow_vllm.target.build import load_hf_target
    from sparrow_vllm.target.prompt import hf_inputs
    from sparrow_vllm.world import make_sample

    model = load_hf_target(target_dir)
    proc = AutoProcessor.from_pretrained(str(target_dir))
    tok = proc.tokenizer
    sm = make_sample("test", 3, FRAMES)
    plain = extract_sample(model, proc, sm.frames(), sm.question, [2, 15], True, 64)
    rs = int(plain["response_start"])
    answer = plain["ids"][rs:].tolist()
    assert answer[-1] == tok.convert_tokens_to_ids("<|im_end|>") and len(answer) > 3
    rep = extract_sample(model, proc, sm.frames(), sm.question, [2, 15], True, 64, repeat_answers=3)
    forced = tok(" ".join([tok.decode(answer[:-1])] * 3), add_special_tokens=False)["input_ids"][:64]
    resp = int(rep["response_start"])
    assert rep["ids"][resp:].tolist() == forced and len(forced) > 2 * len(answer)
    assert resp == rs and torch.equal(rep["ids"][:resp], plain["ids"][:rs])

    inputs = hf_inputs(proc, sm.frames(), sm.question)
    plen = inputs["input_ids"].shape[1]
    assert resp == plen
    inputs["input_ids"] = rep["ids"].long()[None]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros(1, len(forced), dtype=inputs["mm_token_type_ids"].dtype)], 1)
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    for a, l in enumerate([2, 15]):
        torch.testing.assert_close(rep["hidden"][:-1, a].float(), out.hidden_states[l][0, :-1], atol=2e-2, rtol=1e-2)
    labels = out.logits[0, plen - 1:-1].argmax(-1)
    assert torch.equal(rep["greedy"][plen - 1:-1].long(), labels)
    assert (rep["greedy"][:plen - 1] == -1).all() and int(rep["greedy"][-1]) == -1
    # the first copy is the target's own answer, so it predicts it token for token
    assert labels[:len(answer) - 1].tolist() == answer[:-1]

    data = tmp_path / "rep"
    m = generate_dataset(target, data, spec(n=1, repeat_answers=2), progress=False)
    assert m["settings"]["repeat_answers"] == 2
    assert "repeat_answers" not in spec().settings()  # plain datasets written before it stay valid
    draft = write_random_draft(tmp_path / "draft", target, anchor_layers=(2,), draft_vocab=64, intermediate=32)
    with pytest.raises(ValueError, match="--repeat-answers"):
        run_eval(target, draft, data, [1], progress=False)
    with pytest.raises(ValueError, match="repeat_answers=0"):
        spec(repeat_answers=0)


def test_eval_target_scores_the_answers_a_dataset_stores(target, full_data, tmp_path):
    """`sparrow eval-target --from-data`: the stored responses, decoded, are the target's own
    greedy answers (transformers, same cap and stop tokens), scored as eval-target scores them;
    answers cut at the cap are counted."""
    from sparrow_vllm.families import family_of
    from sparrow_vllm.target.evaluate import evaluate_data
    from sparrow_vllm.world import make_sample, score_answer

    report = evaluate_data(full_data)
    family = family_of(target)
    model, processor = family.load_hf(target), family.load_processor(target)
    tok = processor.tokenizer
    eos = family.eos_token_ids(tok)  # what `sparrow data` stops on
    if model.generation_config.eos_token_id is not None:
        e = model.generation_config.eos_token_id
        eos += e if isinstance(e, list) else [e]
    assert report["n"] == len(report["rows"]) == 5 and report["max_new_tokens"] == 4
    capped = 0
    for i, row in enumerate(report["rows"]):
        s = make_sample("train", i, FRAMES)
        inputs = family.hf_inputs(processor, s.frames(), s.question)
        family.before_generate(model)
        new = model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos[0])[0, inputs["input_ids"].shape[1]:].tolist()
        capped += len(new) == 4 and not set(new) & set(eos)
        assert row["id"] == s.id
        assert row["answer"] == tok.decode(new, skip_special_tokens=True).strip()
        assert row["exact"] == score_answer(s, row["answer"], "exact")
    assert report["answers_at_token_cap"] == capped
    with pytest.raises(ValueError, match="not the target that answered"):
        evaluate_data(full_data, target=write_tiny_target(tmp_path / "other", 1))


def test_long_task_data_holds_one_turn_after_the_reference_history(target, tmp_path):
    """--task chat/stream: sample i is turn i % turns of its conversation; the stored sequence is
    that turn's prompt (earlier questions and reference answers, one video per streamed clip)
    followed by the target's greedy answer; text rows only (no visual positions)."""
    from sparrow_vllm.target.prompt import long_turn
    from sparrow_vllm.world.story import make_long_sample

    out = tmp_path / "chat"
    m = generate_dataset(target, out, spec(task="chat", n=3, num_frames=64, all_positions=False, shard_size=3),
                         progress=False)
    assert m["settings"]["task"] == "chat"
    _, samples = load_samples(out)
    ids = m["shards"]["0"]["samples"]
    assert [i.rsplit("-", 1)[1] for i in ids] == ["turn0", "turn1", "turn2"]
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(str(target)).tokenizer
    for i, (sid, rec) in enumerate(zip(ids, samples)):
        turn = long_turn(make_long_sample("chat", "train", i, 64), i)
        text = tok.decode(rec["ids"][:int(rec["response_start"])])
        assert turn["question"] in text and all(a in text for _, a in turn["history"])
        assert (rec["text_index"] >= 0).all()  # text positions only
    with pytest.raises(ValueError, match="at least 128 frames"):
        spec(task="stream", num_frames=64)
    with pytest.raises(ValueError, match="task 'caption'"):
        spec(task="caption")
    with pytest.raises(ValueError, match="qa task only"):
        spec(task="narrate", repeat_answers=2, num_frames=64)
    m = generate_dataset(target, tmp_path / "stream", spec(task="stream", n=2, num_frames=128, all_positions=False,
                                                          shard_size=2), progress=False)
    _, samples = load_samples(tmp_path / "stream")
    text = tok.decode(samples[1]["ids"])
    assert text.count("<|vision_start|>") == 2  # turn 1 of a stream: two clips


def test_simulated_dilution_moves_only_what_sees_the_video_and_leaves_no_trace(target, full_data, tmp_path):
    """``--simulate-visual-tokens``: rows before the video are untouched (they cannot see it),
    rows after it move; a plain extraction after it, on the same model object, is the plain one."""
    from sparrow_vllm.draft.data import dilution_of, load_target

    model, processor = load_target(target)
    sim = tmp_path / "sim"
    generate_dataset(target, sim, spec(simulate_visual_tokens=8 * FRAMES * 16), model, processor, progress=False)
    assert load_manifest(sim)["settings"]["simulate_visual_tokens"] == 8 * FRAMES * 16
    plain = tmp_path / "plain"
    generate_dataset(target, plain, spec(), model, processor, progress=False)
    _, a = _tensors(plain)
    _, b = _tensors(full_data)
    assert all(torch.equal(a[k][t], b[k][t]) for k in a for t in a[k])
    _, s = _tensors(sim)
    moved = 0
    for k in a:
        first_visual = int(torch.nonzero(a[k]["text_index"] == -1)[0])
        assert torch.equal(s[k]["hidden"][:first_visual], a[k]["hidden"][:first_visual])
        n = min(len(a[k]["ids"]), len(s[k]["ids"]))
        after = a[k]["text_index"][:n] >= 0
        after[:first_visual] = False
        moved += int((s[k]["hidden"][:n][after] != a[k]["hidden"][:n][after]).any())
    assert moved == len(a)
    assert dilution_of(128, 0) == 1.0 and dilution_of(128, 512) == 4.0
    with pytest.raises(ValueError, match="shorter than the clips"):
        dilution_of(512, 128)
    with pytest.raises(ValueError, match="qa task only"):
        spec(simulate_visual_tokens=4096, task="narrate", num_frames=128)


def test_study_counts_the_answer_tokens_the_window_cuts():
    """A study row says how much of the answers lies past W: the tokens at a text index >= W."""
    from sparrow_vllm.draft.study import markdown, tau_by_text_place, text_past_window

    per = [{"text_before": 4, "to_generate": 10}, {"text_before": 20, "to_generate": 5}]
    rep = {"attention": "text_window", "window_size": 8, "per_sample": per}
    got = text_past_window(rep)
    assert got["text_before_mean"] == 12 and got["text_past_window"] == (6 + 5) / 15
    assert text_past_window(rep | {"window_size": 64})["text_past_window"] == 0
    assert "text_past_window" not in text_past_window(rep | {"attention": "full"})  # EAGLE-3: no window
    assert text_past_window({"attention": "text_window", "window_size": 8, "per_sample": [{"to_generate": 3}]}) == {}
    row = {"data": "d", "visual_tokens": 1024, "draft": "x", "recipe": "sparrow", "anchor_layers": [15],
           "train_window": 8, "eval_window": 8, "samples": 2, "rounds": {"5": 3}, "tau": {"5": 2.0},
           "tau_oracle": {"5": 3.0}, **got}
    assert "answer past W" in markdown([row]) and "| 12 | 73% |" in markdown([row])
    # tau split by where the answer lies: inside the first 8 text tokens, or past them
    per = [{"text_before": 2, "to_generate": 6, "accepted": {"1": [1, 0, 1]}},
           {"text_before": 5, "to_generate": 9, "accepted": {"1": [0, 0]}},  # across the line: neither
           {"text_before": 9, "to_generate": 2, "accepted": {"1": [0]}}]
    split = tau_by_text_place({"results": {"1": {}}, "per_sample": per}, at=8)["tau_by_text_place"]
    assert split["inside"] == {"tau": 1 + 2 / 3, "rounds": 3} and split["past"] == {"tau": 1.0, "rounds": 1}
    old = {k: v for k, v in row.items() if not k.startswith("text_")}
    assert "answer past W" not in markdown([old])  # studies without long text keep their table
