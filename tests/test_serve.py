"""``vllm serve`` (the real CLI, on CPU) with Sparrow, through the OpenAI API on loopback."""

import base64
import json

import pytest

from sparrow_vllm.harness.server import Server, chat_body, metric_value, stream_chat, write_mp4
from sparrow_vllm.world import make_sample

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(target_dir, sparrow_draft, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    sc = json.dumps({"method": "sparrow", "model": str(sparrow_draft), "num_speculative_tokens": 3})
    args = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
            "--speculative-config", sc, "--allowed-local-media-path", str(d),
            "--limit-mm-per-prompt", '{"video": 1, "image": 1}']
    with Server(str(target_dir), args, log=d / "serve.log") as s:
        s.media_dir = d
        yield s


@pytest.fixture(scope="module")
def video(server):
    s = make_sample("test", 5, 64)
    path = write_mp4(s.frames(), server.media_dir / "clip.mp4")
    server.model_name = json.loads(server.get("/v1/models"))["data"][0]["id"]
    return s, path


def test_chat_with_file_and_base64_video(server, video):
    sample, path = video
    a = server.post("/v1/chat/completions", chat_body(server.model_name, sample.question, f"file://{path}"))
    data_url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    b = server.post("/v1/chat/completions", chat_body(server.model_name, sample.question, data_url))
    # vLLM's video-file loader samples frames (2 fps by default): some visual tokens, at least
    # the 4-frame minimum (32 tokens) on top of the ~40 text tokens.
    assert a["usage"]["prompt_tokens"] >= 40 + 32
    assert a["choices"][0]["message"]["content"].strip()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_streamed_chat_equals_unstreamed(server, video):
    sample, path = video
    body = chat_body(server.model_name, "Describe the video.", f"file://{path}")
    full = server.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
    streamed = stream_chat(server.url + "/v1/chat/completions", body, timeout=600)
    assert not streamed["error"] and streamed["chunks"] > 1 and streamed["text"] == full, streamed


def test_metrics_show_speculative_decoding(server, video):
    text = server.get("/metrics")
    assert metric_value(text, "vllm:spec_decode_num_drafts_total") > 0
    assert metric_value(text, "vllm:spec_decode_num_draft_tokens_total") > 0
    assert "vllm:spec_decode_num_accepted_tokens_total" in text
