"""Multi-turn and stream chats through ``vllm serve`` (prefix caching on, as by default):
greedy output with Sparrow equals greedy output without speculation, token for token, on
conversations whose text crosses the draft's window and whose follow-ups hit the prefix cache;
and the draft's proposals are accepted there."""

from __future__ import annotations

import json

import pytest

from sparrow_vllm.draft.config import SparrowDraftConfig
from sparrow_vllm.harness.server import Server, conversation_body, metric_value, write_mp4
from sparrow_vllm.world.story import make_long_sample

pytestmark = pytest.mark.vllm

CHATS, STREAMS = 12, 8  # 20 conversations
MAX_TOKENS = 32


def _conversations(media_dir):
    """(id, [(video_url or None, question, reference answer)]) of every conversation: chats over
    one 64-frame video (3 turns), streams of two 64-frame clips."""
    out = []
    for i in range(CHATS):
        s = make_long_sample("chat", "test", i, 64)
        url = "file://" + str(write_mp4(s.frames(), media_dir / f"{s.id}.mp4", fps=2))
        out.append((s.id, [(url if t["clip"] else None, t["question"], t["answer"]) for t in s.turns[:3]]))
    for i in range(STREAMS):
        s = make_long_sample("stream", "test", i, 128)
        urls = ["file://" + str(write_mp4(c, media_dir / f"{s.id}-{j}.mp4", fps=2)) for j, c in enumerate(s.clips())]
        out.append((s.id, [(u, t["question"], t["answer"]) for u, t in zip(urls, s.turns)]))
    return out


def _serve(target_dir, media_dir, conversations, speculative_config=None):
    """Every turn of every conversation, the earlier turns carrying their reference answers
    (a client replaying a conversation): per turn the output token ids, prompt tokens and the
    prefix-cache hits it added; and the spec-decode counters of the whole run."""
    args = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096", "--max-num-seqs", "4",
            "--allowed-local-media-path", str(media_dir), "--limit-mm-per-prompt", '{"video": 2, "image": 1}']
    if speculative_config:
        args += ["--speculative-config", json.dumps(speculative_config)]
    name = "sparrow" if speculative_config else "none"
    turns_out = {}
    with Server(str(target_dir), args, log=media_dir / f"serve-{name}.log") as server:
        model = json.loads(server.get("/v1/models"))["data"][0]["id"]
        for cid, turns in conversations:
            for k in range(len(turns)):
                hits = metric_value(server.get("/metrics"), "vllm:prefix_cache_hits_total")
                body = conversation_body(model, turns[:k + 1], MAX_TOKENS, return_token_ids=True)
                r = server.post("/v1/chat/completions", body)
                turns_out[(cid, k)] = {
                    "token_ids": r["choices"][0]["token_ids"], "prompt_tokens": r["usage"]["prompt_tokens"],
                    "prefix_hits": metric_value(server.get("/metrics"), "vllm:prefix_cache_hits_total") - hits}
        metrics = server.get("/metrics")
    spec = {k: metric_value(metrics, f"vllm:spec_decode_num_{k}_total") for k in ("drafts", "accepted_tokens")}
    return turns_out, spec


@pytest.fixture(scope="module")
def runs(target_dir, sparrow_draft, tmp_path_factory):
    media = tmp_path_factory.mktemp("serve_long")
    conversations = _conversations(media)
    none, _ = _serve(target_dir, media, conversations)
    cfg = {"method": "sparrow", "model": str(sparrow_draft), "num_speculative_tokens": 3}
    sparrow, spec = _serve(target_dir, media, conversations, cfg)
    return conversations, none, sparrow, spec


def test_multi_turn_and_stream_chats_are_lossless(runs):
    conversations, none, sparrow, _ = runs
    assert len(conversations) >= 20 and none.keys() == sparrow.keys()
    mismatched = [key for key in none if none[key]["token_ids"] != sparrow[key]["token_ids"]]
    assert not mismatched, mismatched
    assert sum(len(v["token_ids"]) for v in none.values()) > 20 * MAX_TOKENS  # real answers, not empty ones


def test_turns_cross_the_window_and_follow_ups_hit_the_prefix_cache(runs, sparrow_draft):
    conversations, _, sparrow, _ = runs
    window = SparrowDraftConfig.from_dir(sparrow_draft).window_size
    visual = {"chat": 256, "stream": 256}  # 64 frames at 112 x 112 -> 256 visual tokens a video
    crossing = 0
    for cid, turns in conversations:
        kind = cid.split("-")[0]
        videos = sum(url is not None for url, _, _ in turns)
        last = sparrow[(cid, len(turns) - 1)]
        crossing += last["prompt_tokens"] - videos * visual[kind] > window
        for k in range(1, len(turns)):  # the video and the earlier turns come from the cache
            assert sparrow[(cid, k)]["prefix_hits"] >= visual[kind], (cid, k, sparrow[(cid, k)])
    assert crossing >= 10, crossing


def test_the_draft_is_accepted_on_long_chats(runs):
    *_, spec = runs
    assert spec["drafts"] > 100
    assert 1 + spec["accepted_tokens"] / spec["drafts"] > 1.5, spec


def test_a_served_qwen_video_file_keeps_every_frame_past_768(tmp_path):
    """vLLM 0.32 reads a Qwen2-VL-family video file with a loader that keeps at most 768 frames
    (6,144 visual tokens of the embedded target, ~32 s at its 24 fps); the family's
    ``every_frame_media_io`` keys (what ``bench_long.py --engines serve`` passes) keep them all."""
    import numpy as np
    from vllm.multimodal.media import ImageMediaIO, VideoMediaIO
    from vllm.multimodal.video import get_video_loader_backend_for_processor

    from sparrow_vllm.families import get_family

    frames = np.zeros((800, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(800)[:, None, None] % 256
    path = write_mp4(frames, tmp_path / "long.mp4", fps=24)
    default = {"fps": 24, "video_backend": get_video_loader_backend_for_processor("Qwen2VLVideoProcessor")}
    every = {"fps": 24} | get_family("qwen2.5-vl").every_frame_media_io()
    video, meta = VideoMediaIO(ImageMediaIO(), **default).load_file(path).media
    assert len(video) == 768  # vLLM's cap, the reason for the keys below
    video, meta = VideoMediaIO(ImageMediaIO(), **every).load_file(path).media
    assert len(video) == 800 and meta["frames_indices"] == list(range(800))


def test_the_flags_a_sparrow_engine_names_read_a_long_qwen_video_file_whole(target_dir, random_draft, tmp_path):
    """The embedded target's processor keeps up to 65,536 frames at 24 fps; vLLM 0.32 samples a
    Qwen2-VL video file at 2 fps, keeps at most 768 frames and sizes its encoder cache for ~8k
    tokens. A Sparrow engine reads what a server without speculation reads (or its greedy
    output would differ) and names at start-up the flags that read every frame
    (``long_video_flags``): with them, this 1,200-frame file is all 9,600 of its visual tokens."""
    import base64

    import numpy as np
    from transformers import AutoConfig

    from sparrow_vllm.families import get_family
    from sparrow_vllm.harness.offline import run_engine_subprocess

    qwen = get_family("qwen2.5-vl")
    flags = qwen.long_video_flags(12288, target_dir)
    assert flags == {"media_io_kwargs": {"video": {"fps": 24.0, "video_backend": "opencv", "num_frames": -1}},
                     "max_num_batched_tokens": 12288 - 1024}
    assert qwen.long_video_flags(12288, tmp_path) is None  # no processor that keeps more: nothing to name
    frames = np.zeros((1200, 112, 112, 3), np.uint8)
    frames[:, :, :, 1] = np.arange(1200)[:, None, None] % 256
    mp4 = write_mp4(frames, tmp_path / "long.mp4", fps=24)
    url = "data:video/mp4;base64," + base64.b64encode(mp4.read_bytes()).decode()
    chat = [{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                         {"type": "text", "text": "What happens?"}]}]}]
    engine = {"max_model_len": 12288, "max_num_seqs": 1, "max_num_batched_tokens": None}
    sparrow = {"method": "sparrow", "model": str(random_draft), "num_speculative_tokens": 2}
    video_id = AutoConfig.from_pretrained(target_dir).video_token_id

    def visual_tokens(engine_args):
        got = run_engine_subprocess({"target": str(target_dir), "prompts": chat, "sampling": {"max_tokens": 4},
                                     "engine": engine_args, "speculative_config": sparrow})
        return got["outputs"][0]["prompt_token_ids"].count(video_id)

    assert visual_tokens(engine) == 50 * 16  # vLLM's 2 fps: 100 frames, two to a token row
    assert visual_tokens(engine | flags) == 600 * 16  # every frame
