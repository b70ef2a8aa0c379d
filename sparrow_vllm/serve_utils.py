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
