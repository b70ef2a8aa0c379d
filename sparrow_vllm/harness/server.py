"""A loopback ``vllm serve`` for tests and benchmarks: start and stop it, stream chats from it,
read its ``/metrics``; encode videos as mp4."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_mp4(frames: np.ndarray, path: Path, fps: float | None = None) -> Path:
    """uint8 ``[T, H, W, 3]`` RGB -> mp4 (OpenCV, which vLLM also decodes with)."""
    import cv2

    from sparrow_vllm.target.config import VIDEO_FPS

    fps = fps or VIDEO_FPS
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class Server:
    """``vllm serve TARGET`` on 127.0.0.1 in its own process group; stopped by PID."""

    def __init__(self, target: str, args: list[str], log: Path, port: int | None = None,
                 env: dict | None = None, startup_timeout: float = 600):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from sparrow_vllm.serving.cpu_env import apply_cpu_defaults

        apply_cpu_defaults(2)
        vllm_bin = str(Path(sys.executable).parent / "vllm")
        cmd = [vllm_bin, "serve", target, "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self._wait(startup_timeout, log)

    def _wait(self, timeout, log):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({self.proc.returncode}):\n" +
                                   "\n".join(Path(log).read_text().splitlines()[-30:]))
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                time.sleep(2)
        self.stop()
        raise TimeoutError(f"vllm serve did not become healthy in {timeout} s")

    def post(self, path: str, body: dict, timeout: float = 600) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=timeout).read())

    def get(self, path: str) -> str:
        return urllib.request.urlopen(self.url + path, timeout=30).read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        # The engine's processes can outlive the API server by a moment, then stay zombies until
        # init reaps them: stopped means the whole group is gone (stragglers killed after 20 s).
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.killpg(self.proc.pid, 0 if time.time() < deadline - 10 else signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# vLLM V1 Prometheus counters (vllm/v1/metrics/loggers.py, vLLM 0.32) under the keys
# spec_decode_stats gives their increase.
SPEC_DECODE_COUNTERS = {"num_drafts": "vllm:spec_decode_num_drafts_total",
                        "num_draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
                        "num_accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
                        "num_preemptions": "vllm:num_preemptions_total"}
ACCEPTED_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos_total"  # {position="i"}


def metric_value(metrics_text: str, name: str) -> float:
    """Sum of a Prometheus counter over its label sets."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def labelled_metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter over the label sets that carry all of ``labels``."""
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(w in line.split("}")[0] for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def finished_in_engine(metrics_text: str) -> float:
    """Requests the engine ran to their end (stop or length): a client abort that reached the
    engine in time is not among them."""
    name = "vllm:request_success_total"
    return metric_value(metrics_text, name) - labelled_metric_value(metrics_text, name, finished_reason="abort")


def _accepted_per_position(metrics_text: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(ACCEPTED_PER_POSITION + "{") and 'position="' in line:
            pos = int(line.split('position="')[1].split('"')[0])
            out[pos] = out.get(pos, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def spec_decode_stats(before: str, after: str) -> dict:
    """Speculative decoding between two ``/metrics`` texts of one server: the increase of each
    of :data:`SPEC_DECODE_COUNTERS`, ``mean_accepted_length`` (tau = 1 + accepted / drafts;
    None without drafts) and ``acceptance_per_position`` (accepted at draft position i / drafts)."""
    stats = {key: int(metric_value(after, name) - metric_value(before, name))
             for key, name in SPEC_DECODE_COUNTERS.items()}
    drafts, a, b = stats["num_drafts"], _accepted_per_position(before), _accepted_per_position(after)
    stats["mean_accepted_length"] = 1 + stats["num_accepted_tokens"] / drafts if drafts else None
    stats["acceptance_per_position"] = [(b[i] - a.get(i, 0.0)) / drafts for i in sorted(b)] if drafts else []
    return stats


def chat_body(model: str, question: str, video_url: str | None = None, max_tokens: int = 24,
              **kw) -> dict:
    """A greedy OpenAI chat-completion body: optional ``video_url`` part, then the question."""
    content = [{"type": "video_url", "video_url": {"url": video_url}}] if video_url else []
    content.append({"type": "text", "text": question})
    return {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **kw}


def conversation_body(model: str, turns, max_tokens: int = 48, **kw) -> dict:
    """A greedy chat-completion body for the last of ``turns``: ``(video_url or None, question,
    answer)`` each, the answers of all but the last given (what the server said before)."""
    messages = []
    for i, (url, question, answer) in enumerate(turns):
        messages += chat_body(model, question, url)["messages"]
        if i < len(turns) - 1:
            messages.append({"role": "assistant", "content": answer})
    return {"model": model, "max_tokens": max_tokens, "temperature": 0, "messages": messages, **kw}


def request_json(url: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    """POST ``body`` as JSON: (HTTP status, parsed response) for successes and errors alike."""
    import urllib.error

    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"raw": raw.decode(errors="replace")}


def _stream_result(**kw) -> dict:
    return {"status": None, "text": "", "chunks": 0, "finish_reason": None, "aborted": False, "error": None,
            "token_ids": [], "usage": None, "ttft_s": None, "e2e_s": None, **kw}


def stream_chat(url: str, body: dict, abort_after: int | None = None, timeout: float = 300,
                total_timeout: float | None = None) -> dict:
    """A streamed chat completion (``url`` ends in ``/v1/chat/completions``), timed on the client
    as ``vllm bench serve`` times it.

    ``abort_after=n``: the client closes the connection after ``n`` content chunks, as a user
    who stops reading does. ``timeout`` bounds each socket read, ``total_timeout`` (if given)
    the whole exchange. Returns ``{"status", "text", "chunks", "finish_reason", "aborted",
    "error", "token_ids", "usage", "ttft_s", "e2e_s"}``: ``token_ids`` and ``usage`` are there
    when ``body`` asks for them (``return_token_ids``, ``stream_options.include_usage``);
    ``ttft_s`` is the time to the first tokens (None if none came), ``e2e_s`` to the end.
    ``error`` is set for an HTTP error (its body; ``status`` has the code), an error event in
    the stream (its error object), a timeout or a stream that ends without ``[DONE]``.
    """
    import urllib.error

    out = _stream_result()
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    pieces, done, t0 = [], False, time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out["status"] = r.status
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    out["error"] = event["error"]
                    break
                out["usage"] = event.get("usage") or out["usage"]
                for choice in event.get("choices", []):
                    content, ids = choice["delta"].get("content"), choice.get("token_ids") or []
                    if out["ttft_s"] is None and (content or ids):
                        out["ttft_s"] = time.perf_counter() - t0
                    if content:
                        pieces.append(content)
                        out["chunks"] += 1
                    out["token_ids"] += ids
                    out["finish_reason"] = choice.get("finish_reason") or out["finish_reason"]
                if abort_after is not None and out["chunks"] >= abort_after:
                    out["aborted"] = True
                    break  # leaving the with-block closes the socket mid-stream
                if total_timeout is not None and time.perf_counter() - t0 > total_timeout:
                    raise TimeoutError(f"request exceeded {total_timeout:.0f} s")
    except urllib.error.HTTPError as e:
        out["status"], out["error"] = e.code, e.read().decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - connection reset, timeout, a malformed event: reported
        out["error"] = f"{type(e).__name__}: {e}"
    out["e2e_s"] = time.perf_counter() - t0
    out["text"] = "".join(pieces)
    if not (done or out["aborted"] or out["error"]):
        out["error"] = "stream ended without [DONE]"
    return out


def run_streams(url: str, bodies: list[dict], abort_after: list[int | None], timeout: float = 180,
                deadline: float = 600, concurrency: int | None = None) -> list[dict]:
    """``bodies`` as streamed chats, one thread each (see :func:`stream_chat`), at most
    ``concurrency`` in flight (default: all at once).

    Bounded: a request with no answer ``deadline`` seconds after the start is reported with an
    ``error`` saying so (its thread is a daemon and is left behind).
    """
    import threading

    results: list[dict | None] = [None] * len(bodies)
    slots = threading.Semaphore(concurrency or len(bodies) or 1)

    def one(i):
        with slots:
            results[i] = stream_chat(url, bodies[i], abort_after[i], timeout)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    end = time.time() + deadline
    for t in threads:
        t.join(max(0.0, end - time.time()))
    return [r if r is not None else _stream_result(error=f"no answer within {deadline} s") for r in results]


def load_figures(results: list[dict], keys: list, references: dict) -> dict:
    """Served / aborted / errors / mismatches of a load run: each completed response must equal
    ``references[keys[i]]`` (the same prompt, greedy, without speculation)."""
    served = [i for i, r in enumerate(results) if not r["error"] and not r["aborted"]]
    mismatches = [i for i in served if results[i]["text"] != references[keys[i]]]
    return {
        "requests": len(results),
        "served": len(served),
        "aborted": sum(bool(r["aborted"]) and not r["error"] for r in results),
        "errors": sum(bool(r["error"]) for r in results),
        "mismatches": len(mismatches),
        "error_examples": sorted({str(r["error"])[:200] for r in results if r["error"]})[:5],
        "mismatch_examples": [{"prompt": keys[i], "got": results[i]["text"], "want": references[keys[i]]}
                              for i in mismatches[:5]],
    }
