"""`sparrow data --ray` on a local 2-CPU Ray cluster: the single-process bytes, restartable,
and a killed actor's shard redone (tiny random Qwen2.5-VL, few samples and frames)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ray")

from sparrow_vllm.draft.data import DataSpec, generate_dataset  # noqa: E402
from sparrow_vllm.draft.ray_data import generate_dataset_ray  # noqa: E402

SPEC = DataSpec(split="train", n=5, num_frames=16, layers=[1, 2, 3], all_positions=True, max_new_tokens=4,
                shard_size=2)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from draft_factory import write_tiny_target

    return write_tiny_target(tmp_path_factory.mktemp("target"), 0)


def _single_process(target, out, **kw):
    """``generate_dataset`` with the actors' torch thread count (1): float sums over 1 and 2
    threads may differ in the last bit, and the tests compare bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate_dataset(target, out, SPEC, progress=False, **kw)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(target, tmp_path_factory):
    """The single-process dataset."""
    out = tmp_path_factory.mktemp("single")
    _single_process(target, out)
    return out


pytestmark = pytest.mark.usefixtures("ray_cluster")


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_ray_extraction_is_byte_identical(target, reference, tmp_path):
    m = generate_dataset_ray(target, tmp_path, SPEC, num_workers=2, progress=False)
    assert list(m["shards"]) == ["0", "1", "2"]
    assert _files(tmp_path) == _files(reference)  # shards and manifest.json


def test_killed_actor_and_interrupted_run_lose_and_duplicate_nothing(target, reference, tmp_path):
    out = tmp_path / "data"
    _single_process(target, out, stop_after_shards=1)  # an interrupted run
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    marker = tmp_path / "killed"
    m = generate_dataset_ray(target, out, SPEC, num_workers=2, progress=False, fault_marker=str(marker))
    assert marker.exists()  # one actor did die mid-shard
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first  # finished shard skipped
    ids = [i for s in m["shards"].values() for i in s["samples"]]
    assert len(ids) == len(set(ids)) == SPEC.n
    assert json.loads((out / "manifest.json").read_text()) == m
    assert _files(out) == _files(reference)


def test_a_shard_that_keeps_killing_its_worker_fails_the_run(target, tmp_path):
    """Ray Data retries a dead actor's task without limit: the shard's attempt count stops it."""
    from sparrow_vllm.draft.ray_data import MAX_ATTEMPTS, ShardWriter

    w = ShardWriter(str(target), str(tmp_path), SPEC, threads=1)
    for _ in range(MAX_ATTEMPTS):  # each start of shard 1 whose actor then died
        w._count_attempt(1)
    with pytest.raises(RuntimeError, match=f"shard 1 .* killed its Ray worker {MAX_ATTEMPTS} times"):
        w._count_attempt(1)
