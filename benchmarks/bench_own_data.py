"""A draft trained only on a user's own videos (``sparrow data --from``) against the committed
SparrowWorld-trained draft, each on its own held-out test set.

The "user's videos" are clips SparrowWorld did not make (moving textures, camera pans, text
overlays: ``sparrow_vllm.harness.own_videos``) in the LLaVA-Video-178K layout, each asked one of
several questions; the target answers them greedily through vLLM (self-distillation) and its
anchor states are captured in the engine. Everything runs through the ``sparrow`` CLI exactly as
a user would, one job at a time, and a rerun skips the steps whose output exists:

1. ``sparrow data --from train.json`` (``--train`` videos) and ``--from test.json`` (``--test``
   held-out videos of the same source);
2. ``sparrow data --split test`` (SparrowWorld test clips of the same length: the committed
   draft's own test set);
3. ``sparrow train`` on the own videos only, the committed draft's recipe (800 steps, MTP 5, seed 0);
4. ``sparrow eval-draft`` (k = 1, 3, 5): own draft on own test, committed draft on SparrowWorld
   test, and the committed draft on own test (how far the SparrowWorld draft carries);
5. the same three inside vLLM (k = 5, batch 1, vLLM's own acceptance counters).

Writes ``results/own_data.json``: tau and per-position acceptance of each, the extraction time per
1k samples and the disk per sample (text positions, five anchor layers, fp16).

    python benchmarks/bench_own_data.py                 # 200 + 48 videos, ~20 min on 2 CPU cores
    python benchmarks/bench_own_data.py --train 16 --test 8 --steps 50 --run runs/own-quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import hardware  # noqa: E402

QUESTIONS = ("Describe the video.", "What moves in the video?", "What colours do you see?",
             "Is there any text in the video?", "What happens in the video?")
RECIPE = ["--recipe", "sparrow", "--anchor-layers", "15", "--window", "128", "--mtp-depth", "5", "--seed", "0"]


def write_source(path: Path, videos: list[Path], root: Path, offset: int) -> Path:
    """LLaVA-Video layout: one question a video (rotating phrasings), no answer (the target's)."""
    recs = [{"id": v.stem, "video": str(v.relative_to(root)),
             "conversations": [{"from": "human", "value": "<video>\n" + QUESTIONS[(i + offset) % len(QUESTIONS)]}]}
            for i, v in enumerate(videos)]
    path.write_text(json.dumps(recs, indent=0))
    return path


def sparrow(*args, log: Path) -> float:
    """Run ``sparrow ARGS`` (the console script's module), output to ``log``; seconds taken."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "sparrow_vllm.cli", *map(str, args)], stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"sparrow {' '.join(map(str, args))} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def shard_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


def through_vllm(target, committed: Path, draft: Path, src_test: Path, r: Path, n_world: int, frames: int) -> dict:
    """tau (k = 5, vLLM's count) of each draft on its test set inside vLLM, batch 1: the own
    test videos as chat requests (vLLM's video loader, as ``vllm serve``), SparrowWorld's as
    ``sparrow data`` built them. One engine per (draft, test set), cached in ``r``."""
    from sparrow_vllm.draft.from_source import chat_messages
    from sparrow_vllm.draft.sources import Conversation, read_source
    from sparrow_vllm.harness.offline import run_engine_subprocess, world_prompt_specs

    own = [{"messages": chat_messages(c, 0)} for c in read_source(src_test, r / "videos") if isinstance(c, Conversation)]
    world = world_prompt_specs("test", range(n_world), frames)
    out = {}
    for name, d, prompts in (("own draft on own test", draft, own),
                             ("committed draft on SparrowWorld test", committed, world),
                             ("committed draft on own test", committed, own)):
        cache = r / "vllm" / (name.replace(" ", "_") + ".json")
        if not cache.exists():
            cache.parent.mkdir(exist_ok=True)
            run = run_engine_subprocess({
                "target": str(target), "prompts": prompts, "sampling": {"max_tokens": 64},
                "engine": {"max_num_seqs": 1, "enable_prefix_caching": False, "allowed_local_media_path": str(r.resolve()),
                           "limit_mm_per_prompt": {"video": 1, "image": 0}},
                "speculative_config": {"method": "sparrow", "model": str(d), "num_speculative_tokens": 5}},
                log=r / "logs" / f"vllm_{cache.stem}.log")
            cache.write_text(json.dumps({"spec": run["spec"], "requests": len(run["outputs"]),
                                         "output_tokens": sum(len(o["token_ids"]) for o in run["outputs"])}))
        c = json.loads(cache.read_text())
        out[name] = {"requests": c["requests"], "output_tokens": c["output_tokens"],
                     "tau": c["spec"]["mean_accepted_length"], "drafts": c["spec"]["num_drafts"],
                     "acceptance_per_position": c["spec"]["acceptance_per_position"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/own-data"), help="working directory (resumable)")
    ap.add_argument("--train", type=int, default=200, help="own training videos")
    ap.add_argument("--test", type=int, default=48, help="own held-out videos (and SparrowWorld test clips)")
    ap.add_argument("--frames", type=int, default=16, help="frames a video (2 fps, 112x112)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "own_data.json")
    a = ap.parse_args()

    from sparrow_vllm.harness.own_videos import write_videos
    from sparrow_vllm.serving.config import default_draft_for
    from sparrow_vllm.target.build import build_target

    target = build_target()
    committed = default_draft_for(str(target))
    r = a.run
    (r / "logs").mkdir(parents=True, exist_ok=True)
    times = {}
    videos = write_videos(r / "videos", a.train + a.test, a.frames)  # deterministic: same files on a rerun
    src_train = write_source(r / "train.json", videos[:a.train], r / "videos", 0)
    src_test = write_source(r / "test.json", videos[a.train:], r / "videos", 1)
    common = ["--target", target, "--video-root", r / "videos"]
    for name, src in (("own-train", src_train), ("own-test", src_test)):
        if not (r / "data" / name / "manifest.json").exists():
            times[name] = sparrow("data", *common, "--out", r / "data" / name, "--from", src,
                                  log=r / "logs" / f"data_{name}.log")
    if not (r / "data" / "world-test" / "manifest.json").exists():
        sparrow("data", "--target", target, "--out", r / "data" / "world-test", "--split", "test",
                "--n", a.test, "--frames", a.frames, log=r / "logs" / "data_world-test.log")
    draft = r / "own-draft"
    if not (draft / "config.json").exists():
        times["train"] = sparrow("train", "--data", r / "data" / "own-train", "--out", draft, "--steps", a.steps,
                                 "--threads", 2, *RECIPE, log=r / "logs" / "train.log")
    evals = {}
    for name, d, data in (("own draft on own test", draft, "own-test"),
                          ("committed draft on SparrowWorld test", committed, "world-test"),
                          ("committed draft on own test", committed, "own-test")):
        out = r / "eval" / (name.replace(" ", "_") + ".json")
        out.parent.mkdir(exist_ok=True)
        if not out.exists():
            sparrow("eval-draft", "--target", target, "--draft", d, "--data", r / "data" / data, "--k", 1, 3, 5,
                    "--threads", 2, "--out", out, log=r / "logs" / f"eval_{out.stem}.log")
        rep = json.loads(out.read_text())
        evals[name] = {"samples": rep["samples"], "visual_tokens": rep["visual_tokens"],
                       **{f"tau_k{k}": rep["results"][str(k)]["tau"] for k in (1, 3, 5)},
                       "acceptance_per_position_k5": rep["results"]["5"]["acceptance_per_position"],
                       "rounds_k5": rep["results"]["5"]["rounds"]}
    served = through_vllm(target, committed, draft, src_test, r, a.test, a.frames)
    manifest = json.loads((r / "data" / "own-train" / "manifest.json").read_text())
    n_train = sum(len(s["samples"]) for s in manifest["shards"].values())
    prev = json.loads(a.out.read_text()) if a.out.exists() else {}
    extract_s = times.get("own-train", prev.get("extraction_s_own_train"))
    own, world = evals["own draft on own test"]["tau_k5"], evals["committed draft on SparrowWorld test"]["tau_k5"]
    res = {
        "command": "python benchmarks/bench_own_data.py" + ("" if (a.train, a.test, a.steps) == (200, 48, 800)
                                                            else f" --train {a.train} --test {a.test} --steps {a.steps}"),
        "hardware": hardware(),
        "target": Path(target).name, "committed_draft": Path(committed).name,
        "train_videos": a.train, "test_videos": a.test, "frames": a.frames, "steps": a.steps,
        "summary_own_train": manifest["summary"]["records"],
        "evals": evals,
        "through_vllm": served,
        "own_vs_committed_k5_through_vllm": served["own draft on own test"]["tau"]
                                             / served["committed draft on SparrowWorld test"]["tau"],
        "own_vs_committed_k5": own / world,
        "extraction_s_own_train": extract_s,
        "extraction_min_per_1k_samples": None if extract_s is None else extract_s / n_train * 1000 / 60,
        "disk_bytes_per_sample": shard_bytes(r / "data" / "own-train") / n_train,
        "anchor_layers_stored": manifest["settings"].get("layers"),
    }
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
