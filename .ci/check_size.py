"""Keep the repository light: no tracked file over 16 MB, tracked binary assets under 80 MB
in all (a checkpoint is committed once, when it becomes a default)."""

import subprocess
import sys
from pathlib import Path

MAX_FILE = 16 * 2**20
MAX_BINARY = 80 * 2**20
BINARY = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz", ".npy", ".png", ".jpg", ".mp4", ".onnx")

root = Path(__file__).resolve().parents[1]
files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.decode().split("\0")
sizes = {f: (root / f).stat().st_size for f in files if f and (root / f).is_file()}
big = [f"{f} ({s / 2**20:.1f} MB)" for f, s in sizes.items() if s > MAX_FILE]
binary = sum(s for f, s in sizes.items() if f.endswith(BINARY))
if big:
    sys.exit(f"size check: tracked files over {MAX_FILE // 2**20} MB: {', '.join(big)}")
if binary > MAX_BINARY:
    sys.exit(f"size check: tracked binary assets total {binary / 2**20:.1f} MB, over {MAX_BINARY // 2**20} MB")
print(f"size check: largest tracked file {max(sizes.values()) / 2**20:.1f} MB, binary assets {binary / 2**20:.1f} MB")
