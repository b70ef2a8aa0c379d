"""`sparrow train --ray` on a local 2-CPU Ray cluster: 2 DDP workers (gloo) follow the
single-process loss curve, and an interrupted run resumes from its Ray Train checkpoint.

Data from the embedded target: its answers differ in length, so the two ranks hold unequal
label counts and only the global normalisation makes the curves agree."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ray")

from sparrow_vllm.draft.data import DataSpec, generate_dataset  # noqa: E402
from sparrow_vllm.draft.train import TrainArgs, train  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def data(target_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    generate_dataset(target_dir, out, DataSpec(split="train", n=6, num_frames=16, layers=[15], max_new_tokens=16,
                                               shard_size=3), progress=False)
    return out


pytestmark = pytest.mark.usefixtures("ray_cluster")


def _args(data, out, **kw):
    base = dict(data=str(data), out=str(out), anchor_layers=[15], window=8, mtp_depth=2, intermediate_size=32,
                draft_vocab=64, steps=STEPS, batch_size=4, lr=3e-4, warmup=1, eval_every=1, ckpt_every=100,
                progress=False)
    base.update(kw)
    return TrainArgs(**base)


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_two_workers_follow_single_process_and_resume(data, tmp_path):
    from sparrow_vllm.draft.ray_train import RUN_NAME, train_ray

    train(_args(data, tmp_path / "single"), log=lambda *_: None)
    out = tmp_path / "ray"
    train_ray(_args(data, out, stop_after=3), num_workers=2)  # interrupted after a checkpoint at step 3
    assert not (out / "model.safetensors").exists()
    assert list((out / RUN_NAME).glob("checkpoint_*/checkpoint.pt"))
    train_ray(_args(data, out, resume=True), num_workers=2)
    assert (out / "model.safetensors").exists()

    single, ddp = _log(tmp_path / "single"), _log(out)
    assert [r["step"] for r in ddp] == list(range(1, STEPS + 1))  # resumed at 4, nothing redone
    losses = torch.tensor([[r["loss"] for r in single], [r["loss"] for r in ddp]])
    assert (losses[0, 1:] < losses[0, :-1]).all()  # it does learn
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    # the fp32 weights after the last step (the export is fp16)
    ref = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)
    ckpts = [torch.load(f, weights_only=False) for f in (out / RUN_NAME).glob("checkpoint_*/checkpoint.pt")]
    got = next(c for c in ckpts if c["step"] == STEPS)
    assert got["model"].keys() == ref["model"].keys()
    for k in ref["model"]:
        torch.testing.assert_close(got["model"][k], ref["model"][k], rtol=1e-4, atol=1e-5, msg=k)
