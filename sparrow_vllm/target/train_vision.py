"""Train an embedded target's vision parts on SparrowWorld, the LM frozen; any family.

What is trained and committed is the family adapter's business (``vision_module``,
``vision_parts_of``): Qwen2.5-VL's tower + merger, LLaVA-OV's tower + projector + newline.
Run once (tens of minutes on 2 cores, in the background); the result is committed as
``assets/<embedded target>/vision_parts.safetensors`` and ``sparrow build-target`` assembles
from it::

    python -m sparrow_vllm.target.train_vision --arch llava-onevision --out runs/target-llava --steps 180 --accum 3
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sparrow_vllm.world import make_sample

VISION_PARTS = "vision_parts.safetensors"

# Mostly short clips (cheap: the frozen 135M LM dominates the step), some longer ones so
# the model sees events spread over time.
FRAME_CHOICES = (16, 16, 16, 16, 32, 32, 64)


def _load_parts(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"--init {path}: no such vision parts file")
    return load_file(str(path))


def train_vision(out_dir: Path, steps: int = 1500, lr: float = 2e-3, accum: int = 4, seed: int = 0,
                 log_every: int = 25, init: Path | None = None, family: str = "qwen2.5-vl") -> Path:
    """``init``: start from these vision parts (a previous run) instead of a random tower.
    ``family``: whose embedded target (``qwen2.5-vl``, ``llava-onevision``)."""
    from sparrow_vllm.families import get_family

    adapter = get_family(family)
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model, tokenizer, processor = adapter.build_model(_load_parts(init) if init else None, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    visual = adapter.vision_module(model)
    for p in visual.parameters():
        p.requires_grad_(True)
    params = [p for p in visual.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    ckpt = out_dir / "checkpoint.pt"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        visual.load_state_dict(state["visual"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        print(f"resumed at step {start}")
    # A continued run (init) sees other clips than the first one.
    rng = random.Random(seed * 1_000_003 + start + (7919 if init else 0))
    log = open(out_dir / "train_log.jsonl", "a")
    model.train()
    running = []
    t0 = time.time()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="train vision"):
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(accum):
            idx = (step * accum + micro + (100_000 if init else 0)) % 900_000
            sample = make_sample("train", idx, rng.choice(FRAME_CHOICES))
            inputs = adapter.hf_inputs(processor, sample.frames(), sample.question, sample.answer)
            out = model(**inputs)
            (out.loss / accum).backward()
            loss_sum += out.loss.item() / accum
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss_sum)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"step": step + 1, "loss": sum(running) / len(running), "lr": sched.get_last_lr()[0],
                   "elapsed_s": round(time.time() - t0, 1)}
            running = []
            log.write(json.dumps(rec) + "\n")
            log.flush()
            tqdm.write(json.dumps(rec))
            torch.save({"visual": visual.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step + 1}, ckpt)
    from safetensors.torch import save_file

    path = out_dir / VISION_PARTS
    save_file(adapter.vision_parts_of(model), str(path))
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-vl", help="family of the embedded target (qwen2.5-vl, llava-onevision)")
    ap.add_argument("--out", type=Path, default=None, help="default: runs/target (qwen2.5-vl), runs/target-<arch>")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--init", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path("runs/target" if a.arch == "qwen2.5-vl" else f"runs/target-{a.arch}")
    print(train_vision(out, a.steps, a.lr, a.accum, seed=a.seed, log_every=a.log_every, init=a.init, family=a.arch))
