"""A Sparrow engine leaves vLLM as it found it: a plain EAGLE-3 engine started after it in the
same process gets vLLM's own proposer (the runner's proposer swap is scoped to its engine)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm

SCRIPT = """
import gc, json, sys
from sparrow_vllm.serving.cpu_env import apply_cpu_defaults
apply_cpu_defaults(1)
from vllm import LLM, SamplingParams

target, sparrow, eagle3 = sys.argv[1:4]
kinds = []
for method, draft in (("sparrow", sparrow), ("eagle3", eagle3), ("sparrow", sparrow)):
    llm = LLM(model=target, dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=2,
              speculative_config={"method": method, "model": draft, "num_speculative_tokens": 3})
    out = llm.generate(["What is the capital of France?"], SamplingParams(temperature=0, max_tokens=8))
    kinds.append(llm.collective_rpc(lambda self: type(self.model_runner.drafter).__name__)[0])
    del llm
    gc.collect()
print("KINDS " + json.dumps(kinds))
"""


def test_eagle3_engine_after_sparrow_engine_gets_vllms_proposer(target_dir, sparrow_draft):
    from sparrow_vllm.serving.defaults import default_drafts

    eagle3 = default_drafts(methods=("eagle3",))["eagle3"]
    # One process: the engine core and its worker run in this interpreter (no spawning).
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(target_dir), str(sparrow_draft), str(eagle3)],
                         capture_output=True, text=True, timeout=1200, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("KINDS ")), None)
    assert line, (out.stdout + out.stderr)[-3000:]
    assert json.loads(line[6:]) == ["SparrowProposer", "EagleProposer", "SparrowProposer"]
