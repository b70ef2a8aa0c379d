"""``sparrow data --ray``: the same shards and manifest as ``sparrow data``, written by a Ray
Data actor pool (one target replica per actor: a GPU each when the cluster has GPUs).

The input is the list of shards the manifest does not list yet, one Ray Data block per
shard; every actor runs :func:`~sparrow_vllm.draft.data.write_shard` (the single-process
per-shard code) and returns the shard's manifest entry. Only the driver writes the manifest,
one shard at a time as results stream in, so an interrupted run resumes where it stopped.
An actor that dies is restarted by Ray and its shard redone (Ray Data's actor-pool defaults:
``max_restarts=-1``, ``max_task_retries=-1``, Ray 2.60); the shard file is written to a temp
name and renamed, and a shard is keyed by its index, so a redone shard can neither be lost
nor duplicated. Those retries are unbounded, so each shard counts its attempts in a file
and fails the run after ``MAX_ATTEMPTS`` (a sample that always kills its worker, e.g. OOM).

``sparrow data --from --ray`` (:func:`distil_source_ray`) runs Ray tasks instead, one vLLM
engine per group of turns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sparrow_vllm.draft.data import DataSpec, open_dataset, pending_shards, record_shard

MAX_ATTEMPTS = 3


class ShardWriter:
    """Ray Data actor: one target replica; ``__call__`` writes the shards of a batch."""

    def __init__(self, target_dir: str, out_dir: str, spec: DataSpec, threads: int,
                 fault_marker: str | None = None):
        import torch

        from sparrow_vllm.draft.data import load_target

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        self.out_dir, self.spec, self.fault_marker = out_dir, spec, fault_marker
        self.model, self.processor = load_target(target_dir, "cuda" if torch.cuda.is_available() else "cpu")

    def _maybe_die(self) -> None:
        """Test hook: the first actor to get here (marker file not there yet) dies mid-shard."""
        if self.fault_marker is None:
            return
        try:
            os.close(os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)

    def _count_attempt(self, k: int) -> None:
        f = _attempts_file(self.out_dir, k)
        n = int(f.read_text()) + 1 if f.exists() else 1
        if n > MAX_ATTEMPTS:
            raise RuntimeError(f"shard {k} of {self.out_dir} killed its Ray worker {n - 1} times (out of "
                               f"memory?): lower --shard-size / --frames, or give the actors more memory")
        f.write_text(str(n))

    def __call__(self, batch: dict) -> dict:
        from sparrow_vllm.draft.data import write_shard

        entries = []
        for k in map(int, batch["shard"]):
            self._count_attempt(k)
            entries.append(json.dumps(write_shard(self.model, self.processor, self.spec, k, self.out_dir,
                                                  on_sample=self._maybe_die)))
        return {"shard": np.asarray(batch["shard"]), "entry": np.asarray(entries, dtype=object)}


def _attempts_file(out_dir, k: int) -> Path:
    return Path(out_dir) / f"shard-{k:05d}.attempts"


def _pool_size(num_workers: int | None, todo: int, threads: int) -> tuple[int, dict]:
    """``(actors, resources per actor)``: one GPU per actor if the cluster has GPUs."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    per_actor = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": threads}
    default = gpus or max(1, int(res.get("CPU", 1)) // threads)
    n = num_workers or default
    return max(1, min(n, todo)), per_actor


def generate_dataset_ray(target_dir, out_dir, spec: DataSpec, num_workers: int | None = None,
                         threads: int = 1, progress: bool = True, fault_marker: str | None = None) -> dict:
    """:func:`~sparrow_vllm.draft.data.generate_dataset` over a Ray Data actor pool; returns
    the manifest. Connects to the running Ray cluster (``ray.init()``: ``RAY_ADDRESS`` or a
    local one). ``out_dir`` must be on storage every actor sees (shared FS on a multi-node
    cluster). ``fault_marker``: test hook, a path; the first actor to start a sample while
    it does not exist creates it and exits (``os._exit``) mid-shard."""
    import ray
    from tqdm import tqdm
    from transformers import AutoConfig

    target_dir, out_dir = str(Path(target_dir).resolve()), Path(out_dir).resolve()
    manifest = open_dataset(target_dir, out_dir, spec, AutoConfig.from_pretrained(target_dir))
    todo, done = pending_shards(manifest, spec)
    if not todo:
        return manifest
    if not ray.is_initialized():
        ray.init()
    for k in todo:  # a fresh run gets fresh attempts
        _attempts_file(out_dir, k).unlink(missing_ok=True)
    actors, per_actor = _pool_size(num_workers, len(todo), threads)
    ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        ShardWriter, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"target_dir": target_dir, "out_dir": str(out_dir), "spec": spec,
                               "threads": threads, "fault_marker": fault_marker},
        **per_actor)
    bar = tqdm(total=spec.n, initial=done, desc=f"data {spec.split} (ray x{actors})", unit="sample",
               disable=not progress)
    for row in ds.iter_rows():
        entry = json.loads(row["entry"])
        record_shard(out_dir, manifest, int(row["shard"]), entry)
        _attempts_file(out_dir, int(row["shard"])).unlink(missing_ok=True)
        bar.update(len(entry["samples"]))
    bar.close()
    return manifest


def distil_source_ray(job: dict, shards: list, todo: list[int], per: int, manifest: dict,
                   num_workers: int | None, threads: int) -> None:
    """``sparrow data --from --ray``: the turn groups of
    :func:`~sparrow_vllm.draft.from_source.generate_source_dataset` as Ray tasks, one vLLM
    capture engine each (a GPU each when the cluster has GPUs), at most ``num_workers`` at a
    time; the driver records every group's shards as it finishes, so an interrupted run
    resumes there. A task whose worker dies is rerun by Ray
    (``max_retries``); its shard files are written to temp names and renamed, keyed by index."""
    import ray

    from sparrow_vllm.draft.from_source import distil_group

    if not ray.is_initialized():
        ray.init()
    per = max(1, min(per, -(-len(todo) // (num_workers or 1))))
    groups = [[(k, shards[k]) for k in todo[g:g + per]] for g in range(0, len(todo), per)]
    workers, resources = _pool_size(num_workers, len(groups), threads)
    task = ray.remote(max_retries=2, **resources)(distil_group)
    running, queue = [], list(groups)
    while queue or running:
        while queue and len(running) < workers:
            running.append(task.remote(job, queue.pop(0)))
        done, running = ray.wait(running, num_returns=1)
        for k, entry in ray.get(done[0]):
            record_shard(job["out_dir"], manifest, k, entry)
