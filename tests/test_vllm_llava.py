"""The second family end to end in vLLM: LLaVA-OneVision with Sparrow and with EAGLE-3,
greedy output token for token equal to no speculation; the draft never reads a video token."""

import json

import pytest

from sparrow_vllm.harness.offline import run_engine_subprocess, world_prompt_specs

pytestmark = pytest.mark.vllm

# LLaVA-OneVision here: 16 tokens per frame + one newline per video: 257 .. 1,025 visual tokens.
FRAMES = [16, 32, 64, 24]
PROMPTS = world_prompt_specs("test", range(8), [FRAMES[i % len(FRAMES)] for i in range(8)]) + [
    {"text": "What is the capital of France?"}]
# Videos of different lengths share encoder batches (vllm_compat patch 7). vLLM sizes
# LLaVA-OV's encoder cache from max_num_batched_tokens, so one step must fit a whole video
# (1,025 tokens); prompts still span several prefill steps when batched.
ENGINE = {"max_model_len": 4096, "max_num_seqs": 4, "enable_chunked_prefill": True, "max_num_batched_tokens": 1040}


@pytest.fixture(scope="module")
def reference(llava_target_dir):
    return run_engine_subprocess({"target": str(llava_target_dir), "prompts": PROMPTS,
                                  "sampling": {"max_tokens": 32}, "engine": ENGINE})


def _run(target, method, draft, k=3):
    return run_engine_subprocess({
        "target": str(target), "prompts": PROMPTS, "sampling": {"max_tokens": 32}, "engine": ENGINE,
        "speculative_config": {"method": method, "model": str(draft), "num_speculative_tokens": k}})


def _assert_identical(ref, got):
    assert len(ref["outputs"]) == len(got["outputs"])
    for i, (a, b) in enumerate(zip(ref["outputs"], got["outputs"])):
        assert a["token_ids"] == b["token_ids"], f"prompt {i}: {a['text']!r} != {b['text']!r}"


def test_sparrow_is_lossless_and_never_reads_video(llava_target_dir, llava_draft, reference, tmp_path,
                                                   monkeypatch):
    from transformers import AutoConfig

    dump = tmp_path / "draft_inputs.jsonl"
    monkeypatch.setenv("SPARROW_DEBUG_DUMP", str(dump))
    got = _run(llava_target_dir, "sparrow", llava_draft)
    _assert_identical(reference, got)
    assert got["spec"]["num_drafts"] > 0
    video_id = AutoConfig.from_pretrained(llava_target_dir).video_token_id
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    fed = [t for r in rows if "target_token_ids" in r for t in r["target_token_ids"]]
    assert fed and video_id not in fed


def test_eagle3_is_lossless(llava_target_dir, llava_eagle3_draft, reference):
    # vLLM's own eagle3 on LLaVA-OneVision needs our patch 6 (hidden-state capture).
    got = _run(llava_target_dir, "eagle3", llava_eagle3_draft)
    _assert_identical(reference, got)
    assert got["spec"]["num_drafts"] > 0


def test_sparrow_serves_long_video_files_without_extra_flags(llava_target_dir, llava_draft, tmp_path):
    """A video file through vLLM's own loader (``LLM.chat``, as ``vllm serve``): vLLM 0.32
    keeps 32 of its frames and sizes the encoder cache below a 300-frame video; a Sparrow
    engine keeps every frame and holds it, with no flag (``FamilyAdapter.serving_defaults``).
    An engine without Sparrow keeps vLLM's behaviour."""
    import base64

    from transformers import AutoConfig

    from sparrow_vllm.harness.own_videos import own_video
    from sparrow_vllm.harness.server import write_mp4

    frames = 300  # 16 tokens a frame here: 4,801 visual tokens, over the 4,096 vLLM budgets offline
    mp4 = write_mp4(own_video("texture", 0, frames), tmp_path / "long.mp4", fps=24)
    url = "data:video/mp4;base64," + base64.b64encode(mp4.read_bytes()).decode()
    chat = [{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                         {"type": "text", "text": "What is in the video?"}]}]}]
    engine = {"max_model_len": 8192, "max_num_seqs": 1, "max_num_batched_tokens": None}
    video_id = AutoConfig.from_pretrained(llava_target_dir).video_token_id

    def visual_tokens(run):
        return run["outputs"][0]["prompt_token_ids"].count(video_id)

    plain = run_engine_subprocess({"target": str(llava_target_dir), "prompts": chat,
                                   "sampling": {"max_tokens": 8}, "engine": engine})
    assert visual_tokens(plain) == 32 * 16 + 1
    got = run_engine_subprocess({"target": str(llava_target_dir), "prompts": chat, "sampling": {"max_tokens": 8},
                                 "engine": engine, "speculative_config": {"method": "sparrow", "model": str(llava_draft)}})
    assert visual_tokens(got) == frames * 16 + 1
    assert got["outputs"][0]["token_ids"]
