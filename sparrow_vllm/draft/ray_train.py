"""``sparrow train --ray --num-workers N``: the draft trained data-parallel by Ray Train.

A ``TorchTrainer`` runs :func:`~sparrow_vllm.draft.train.train_loop` (the single-process
loop) on every worker, with ``MTPLoss(model)`` wrapped in DDP (gloo on CPU, nccl when the
cluster has GPUs). Every rank builds the same seeded run; each takes every N-th sample of
the global batch, and the CE is normalised by the global label counts, so a step equals
the single-process step up to float rounding. Rank 0 logs (``train_log.jsonl``), evaluates
and exports; checkpoints (the single-process ``checkpoint.pt``) go through
``ray.train.report`` into ``<out>/ray_train``, and ``--resume`` continues from the latest.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from sparrow_vllm.draft.train import MTPLoss, TrainArgs, export, prepare_run, train_loop

RUN_NAME = "ray_train"  # Ray Train run dir under --out


class RayCheckpoint:
    """``train_loop``'s checkpointer on Ray Train: every rank reports at the same steps,
    rank 0 attaches the state (Ray Train 2.x, ``ray.train.report`` / ``get_checkpoint``)."""

    def __init__(self, rank: int):
        self.rank = rank

    def load(self) -> dict | None:
        import ray.train

        c = ray.train.get_checkpoint()
        if c is None:
            return None
        with c.as_directory() as d:
            return torch.load(Path(d) / "checkpoint.pt", weights_only=False)

    def save(self, state: dict, metrics: dict) -> None:
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "checkpoint.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def __str__(self) -> str:
        return "the Ray Train checkpoint"


def _train_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    torch.set_flush_denormal(True)
    a = TrainArgs(**config["args"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    log = print if rank == 0 else (lambda *_: None)
    run = prepare_run(a, log)
    # Every rank holds identical buffers (vocab tables, the target's embedding): no broadcast.
    ddp = ray.train.torch.prepare_model(MTPLoss(run.model), parallel_strategy_kwargs={"broadcast_buffers": False})
    step, metrics, finished = train_loop(a, run, RayCheckpoint(rank), log, rank, world_size, ddp)
    if finished and rank == 0:
        export(a, run, step, metrics, log)


def train_ray(a: TrainArgs, num_workers: int | None = None, threads: int = 1) -> Path:
    """:func:`~sparrow_vllm.draft.train.train` on ``num_workers`` Ray Train workers; returns
    ``a.out``. Connects to the running Ray cluster (``ray.init()``: ``RAY_ADDRESS`` or a
    local one); ``--data``/``--out`` must be on storage every worker sees. ``num_workers``:
    default one per GPU of the cluster, else its CPUs / ``threads``."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if num_workers is not None and num_workers < 1:
        raise ValueError(f"--num-workers {num_workers}: need at least 1")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolve = lambda p: p and str(Path(p).resolve())  # noqa: E731 - workers may start elsewhere
    data = a.data if isinstance(a.data, str) else [resolve(d) for d in a.data]
    a = replace(a, out=str(out), data=resolve(data) if isinstance(data, str) else data,
                val_data=resolve(a.val_data), target=resolve(a.target))
    if not a.resume:  # as the single-process run, a fresh run ignores an old checkpoint
        shutil.rmtree(out / RUN_NAME, ignore_errors=True)
    if not ray.is_initialized():
        ray.init()
    res = ray.cluster_resources()
    use_gpu = res.get("GPU", 0) >= 1
    num_workers = num_workers or (int(res["GPU"]) if use_gpu else max(1, int(res.get("CPU", 1)) // threads))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"args": asdict(a), "threads": threads},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": threads}),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(out),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    trainer.fit()
    return out
