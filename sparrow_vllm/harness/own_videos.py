"""Short videos that SparrowWorld did not make (moving textures, camera pans, text overlays),
and tiny datasets of them in each format ``sparrow data --from`` reads."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

KINDS = ("texture", "pan", "text")


def own_video(kind: str, seed: int, frames: int = 16, size: int = 112) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: drifting sine stripes, a pan over a smooth random
    image, or a counter drawn over a gradient."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((frames, size, size, 3), np.uint8)
    if kind == "pan":
        big = cv2.resize(rng.integers(0, 255, (8, 24, 3), dtype=np.uint8), (3 * size, size),
                         interpolation=cv2.INTER_CUBIC)
    for t in range(frames):
        if kind == "texture":
            f = 2 * np.pi * (x * np.cos(seed) + y * np.sin(seed)) / (10 + seed % 7) + t / 3
            out[t] = (127 + 120 * np.sin(f)[..., None] * rng.uniform(0.5, 1, 3)).astype(np.uint8)
        elif kind == "pan":
            off = int(t * (2 * size) / max(frames - 1, 1))
            out[t] = big[:, off:off + size]
        else:
            out[t] = np.stack([x * 255 / size, y * 255 / size, np.full_like(x, 60)], -1).astype(np.uint8)
            cv2.putText(out[t], f"{seed}:{t}", (8, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    return out


def write_videos(folder: Path, n: int, frames: int = 16) -> list[Path]:
    from sparrow_vllm.harness.server import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    return [write_mp4(own_video(KINDS[i % 3], i, frames), folder / f"{KINDS[i % 3]}-{i}.mp4", fps=2)
            for i in range(n)]


def write_llava(path: Path, videos: list[Path], root: Path) -> Path:
    """LLaVA-Video-178K layout, one- and two-turn conversations, videos relative to ``root``."""
    recs = []
    for i, v in enumerate(videos):
        conv = [{"from": "human", "value": "<video>\nDescribe the video."}, {"from": "gpt", "value": "Stripes."}]
        if i % 2:
            conv += [{"from": "human", "value": "What moves?"}, {"from": "gpt", "value": "The camera."}]
        recs.append({"id": f"llava-{i}", "video": str(v.relative_to(root)), "conversations": conv})
    path.write_text(json.dumps(recs))
    return path


def write_openai(path: Path, videos: list[Path]) -> Path:
    """OpenAI chat JSONL, as logged from ``vllm serve``: file:// and data: URLs."""
    lines = []
    for i, v in enumerate(videos):
        url = (f"file://{v}" if i % 2 == 0 else
               "data:video/mp4;base64," + base64.b64encode(v.read_bytes()).decode())
        lines.append(json.dumps({"id": f"chat-{i}", "messages": [
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": "What is in the video?"}]},
            {"role": "assistant", "content": "A pattern."}]}))
    path.write_text("\n".join(lines) + "\n")
    return path
