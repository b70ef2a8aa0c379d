"""``sparrow data --from`` on videos SparrowWorld did not make, through vLLM: every record kept
or skipped with its reason; the stored turn is the prompt ``vllm serve`` builds for the same
file (same visual token count) and the target's greedy answer there; resumable; the data
trains and evaluates a draft unchanged."""

from __future__ import annotations

import json

import pytest

from sparrow_vllm.harness.own_videos import write_llava, write_openai, write_videos
from sparrow_vllm.draft.data import load_samples
from sparrow_vllm.draft.from_source import chat_messages, generate_source_dataset, items_of
from sparrow_vllm.draft.sources import Conversation, read_source
from sparrow_vllm.harness.server import Server

pytestmark = pytest.mark.vllm
MAX_NEW = 12


@pytest.fixture(scope="module")
def dataset(target_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    videos = write_videos(root / "videos", 6)
    src = write_llava(root / "llava.json", videos, root)
    recs = json.loads(src.read_text()) + [{"id": "gone", "video": "videos/missing.mp4",
                                           "conversations": [{"from": "human", "value": "<video>\nQ"}]}]
    src.write_text(json.dumps(recs))
    out = root / "data"
    m = generate_source_dataset(target_dir, out, src, video_root=root, layers=[15], max_new_tokens=MAX_NEW,
                                shard_size=4, max_model_len=4096)
    return root, src, out, m


def test_records_and_turns_are_counted(dataset):
    _, _, out, m = dataset
    assert m["summary"]["records"] == "kept 6, skipped 1: 1 missing video file"
    assert m["summary"]["turns"] == "kept 9, skipped 0"  # 3 two-turn conversations
    _, samples = load_samples(out)
    assert len(samples) == 9 and all((s["text_index"] >= 0).all() for s in samples)
    assert m["settings"]["frames"].startswith("vLLM's video loader")


def test_stored_turns_are_what_vllm_serve_sees_and_says(dataset, target_dir):
    root, src, out, _ = dataset
    convs = [r for r in read_source(src, root) if isinstance(r, Conversation)]
    items = {sid: (c, t) for sid, c, t in items_of(convs)}
    _, samples = load_samples(out)
    args = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
            "--allowed-local-media-path", str(root)]
    with Server(str(target_dir), args, log=root / "serve.log") as server:
        model = json.loads(server.get("/v1/models"))["data"][0]["id"]
        for s in samples:
            c, t = items[s["id"]]
            r = server.post("/v1/chat/completions", {"model": model, "messages": chat_messages(c, t),
                                                     "max_tokens": MAX_NEW, "temperature": 0, "return_token_ids": True})
            rs = int(s["response_start"])
            assert int(s["seq_pos"][rs]) == r["usage"]["prompt_tokens"], s["id"]  # same prompt, same visual tokens
            assert s["ids"][rs:].tolist() == r["choices"][0]["token_ids"], s["id"]  # the target's greedy answer
    assert sum(int(s["seq_pos"][int(s["response_start"])]) - int(s["response_start"]) for s in samples) >= 9 * 64


def test_a_rerun_resumes_and_the_data_trains_a_draft(dataset, target_dir, monkeypatch, tmp_path):
    from sparrow_vllm.draft import from_source
    from sparrow_vllm.draft.evaluate import run_eval
    from sparrow_vllm.draft.train import TrainArgs, train

    _, src, out, m = dataset
    monkeypatch.setattr(from_source, "run_capture", lambda *a, **k: pytest.fail("a finished dataset reran vLLM"))
    again = generate_source_dataset(target_dir, out, src, video_root=src.parent, layers=[15],
                                    max_new_tokens=MAX_NEW, shard_size=4, max_model_len=4096)
    assert again["shards"] == m["shards"]
    with pytest.raises(ValueError, match="other settings"):
        generate_source_dataset(target_dir, out, src, video_root=src.parent, layers=[15], max_new_tokens=5,
                                shard_size=4, max_model_len=4096)
    a = TrainArgs(data=str(out), out=str(tmp_path / "draft"), anchor_layers=[15], window=32, mtp_depth=2,
                  intermediate_size=64, draft_vocab=256, steps=4, batch_size=2, warmup=1, eval_every=4,
                  ckpt_every=100, val_data=str(out), progress=False)
    train(a, log=lambda *_: None)
    rep = run_eval(target_dir, tmp_path / "draft", out, [3], progress=False)
    assert rep["results"]["3"]["rounds"] > 0


def test_openai_logs_with_data_urls_go_through(target_dir, tmp_path):
    videos = write_videos(tmp_path / "v", 2)
    src = write_openai(tmp_path / "chat.jsonl", videos)
    m = generate_source_dataset(target_dir, tmp_path / "data", src, layers=[15], max_new_tokens=4,
                                max_model_len=4096)
    assert m["summary"] == {"records": "kept 2, skipped 0", "turns": "kept 2, skipped 0"}


def test_dataset_answers_are_teacher_forced(dataset, target_dir, tmp_path):
    from transformers import AutoTokenizer

    root, src, _, _ = dataset
    m = generate_source_dataset(target_dir, tmp_path / "ds", src, video_root=root, layers=[15], responses="dataset",
                                max_model_len=4096)
    assert m["summary"]["turns"] == "kept 9, skipped 0" and m["settings"]["responses"] == "dataset"
    tok = AutoTokenizer.from_pretrained(str(target_dir))
    convs = {c.id: c for c in read_source(src, root) if isinstance(c, Conversation)}
    _, samples = load_samples(tmp_path / "ds")
    for s in samples:
        cid, _, turn = s["id"].rpartition("-turn")
        c = convs[cid] if cid else convs[s["id"]]
        answer = c.turns[int(turn) if cid else 0][1]
        rs = int(s["response_start"])
        assert tok.decode(s["ids"][rs:-1]) == answer  # then the target's own next token
        assert s["greedy"][rs - 1:-2].tolist() == s["ids"][rs:-1].tolist()


def test_ray_writes_the_same_shards_in_groups(dataset, target_dir, tmp_path, monkeypatch):
    """``--from --ray``: the groups run as Ray tasks, one capture engine each, two at a time;
    the shards hold the same turns, tokens and (to fp16) states as the single-process run's,
    and the manifest the same summary."""
    import numpy as np
    import ray

    from sparrow_vllm.draft import from_source

    root, src, out, m = dataset
    monkeypatch.setattr(from_source, "GROUP_TURNS", 8)  # two shards a group: two groups, two workers
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        r = generate_source_dataset(target_dir, tmp_path / "ray", src, video_root=root, layers=[15],
                                    max_new_tokens=MAX_NEW, shard_size=4, max_model_len=4096, ray=True,
                                    num_workers=2)
    finally:
        ray.shutdown()
    assert r["summary"] == m["summary"] and r["settings"] == m["settings"]
    assert {k: e["samples"] for k, e in r["shards"].items()} == {k: e["samples"] for k, e in m["shards"].items()}
    _, a = load_samples(out)
    _, b = load_samples(tmp_path / "ray")
    for x, y in zip(a, b):
        assert x["id"] == y["id"] and x["ids"].tolist() == y["ids"].tolist()
        np.testing.assert_allclose(np.asarray(x["hidden"], np.float32), np.asarray(y["hidden"], np.float32),
                                   atol=2e-2, rtol=2e-2)
