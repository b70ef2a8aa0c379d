"""Start and stop a loopback ``vllm serve`` for tests and benchmarks; encode videos as mp4."""

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
        from sparrow_vllm.cpu_env import apply_cpu_defaults

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
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


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


def chat_body(model: str, question: str, video_url: str | None = None, max_tokens: int = 24,
              **kw) -> dict:
    """A greedy OpenAI chat-completion body: optional ``video_url`` part, then the question."""
    content = [{"type": "video_url", "video_url": {"url": video_url}}] if video_url else []
    content.append({"type": "text", "text": question})
    return {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **kw}


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


def stream_chat(url: str, body: dict, abort_after: int | None = None, timeout: float = 300) -> dict:
    """A streamed chat completion (``url`` ends in ``/v1/chat/completions``).

    ``abort_after=n``: the client closes the connection after ``n`` content chunks, as a user
    who stops reading does. Returns ``{"status", "text", "chunks", "finish_reason",
    "aborted", "error"}``; ``error`` is set for an HTTP error, an error event in the stream,
    a timeout or a stream that ends without ``[DONE]``.
    """
    import urllib.error

    out = {"status": None, "text": "", "chunks": 0, "finish_reason": None, "aborted": False,
           "error": None}
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    pieces, done = [], False
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
                for choice in event.get("choices", []):
                    if choice["delta"].get("content"):
                        pieces.append(choice["delta"]["content"])
                        out["chunks"] += 1
                    out["finish_reason"] = choice.get("finish_reason") or out["finish_reason"]
                if abort_after is not None and out["chunks"] >= abort_after:
                    out["aborted"] = True
                    break  # leaving the with-block closes the socket mid-stream
    except urllib.error.HTTPError as e:
        out["status"], out["error"] = e.code, e.read().decode(errors="replace")
    except (OSError, ValueError) as e:  # connection reset, timeout, a malformed event
        out["error"] = f"{type(e).__name__}: {e}"
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
    hung = {"status": None, "text": "", "chunks": 0, "finish_reason": None, "aborted": False,
            "error": f"no answer within {deadline} s"}
    return [r if r is not None else dict(hung) for r in results]


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
