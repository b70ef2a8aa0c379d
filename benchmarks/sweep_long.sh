#!/usr/bin/env bash
# The long-workload measurements on the target and drafts build_long.sh builds, one engine at a
# time; each step runs once (benchmarks/steps.sh; its log is runs/long/sweep/<step>.log) and
# bench_long.py skips the cells its JSON holds:
#   bash benchmarks/build_long.sh && bash benchmarks/sweep_long.sh
# First it checks that the rebuilt target answers as the one results/long_workloads.json
# measured (greedy, token for token at 1k visual tokens), so new cells sit beside the old ones.
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/python; T=runs/target-long-all/target200; R=runs/long; B=$R/sweep
mkdir -p "$B"
STEPS_DIR=$B; source benchmarks/steps.sh
L=(benchmarks/bench_long.py --target "$T" --sparrow-draft $R/sp-a3-w128 --eagle3-draft $R/ea)
step same-target "$P" "${L[@]}" --visual-tokens 1024 --tasks narrate --methods none --requests 40 --out $B/same-target.json
"$P" - "$B/same-target.json" <<'EOF'
import json, sys
from pathlib import Path
key = lambda c: (c["engine"], c["task"], c["method"], c["visual_tokens"], c.get("repeat", 0))
new = {key(c): c for c in json.loads(Path(sys.argv[1]).read_text())["cells"]}
old = [c for c in json.loads(Path("benchmarks/results/long_workloads.json").read_text())["cells"]
       if c["target"].endswith("target200") and key(c) in new]
if not old:
    sys.exit("no cell of results/long_workloads.json to compare the rebuilt target with")
for c in old:
    got = [o["token_ids"] for o in new[key(c)]["outputs"]]
    want = [o["token_ids"] for o in c["outputs"]]
    if got != want:
        sys.exit(f"the rebuilt target answers otherwise than the measured one ({sum(a != b for a, b in zip(got, want))}"
                 f" of {len(want)} answers differ): rerun the long cells with --redo before comparing")
print(f"the rebuilt target gives the measured answers ({len(old)} cell(s))")
EOF
# 51,200 visual tokens with both drafts drafting past their configs' 32,768 (a Sparrow engine
# lifts vLLM's cap itself, EAGLE-3 gets the engine's length: bench_long.lift_drafter_cap)
step 51k "$P" "${L[@]}" --visual-tokens 51200 --tasks narrate --requests 4 --videos 1 --redo
# Sparrow against EAGLE-3 at 25k is a few percent, under the spread of runs: two more repeats of each method (repeat 0 is in the file)
step repeats-25k "$P" "${L[@]}" --visual-tokens 25600 --requests 16 --videos 4 --tasks narrate --repeats 3
# vllm serve past 1k: each conversation turn by turn, follow-ups on the cached video
step serve-4k "$P" "${L[@]}" --visual-tokens 4096 --requests 40 --engines serve
step serve-25k "$P" "${L[@]}" --visual-tokens 25600 --requests 16 --videos 4 --engines serve --tasks narrate
# the 4k serve ratios move between runs more than the two drafts differ: a second repeat
step repeats-serve-4k "$P" "${L[@]}" --visual-tokens 4096 --requests 40 --engines serve --repeats 2
# adaptive k on long answers, then on short ones at 25k (the committed target and draft)
step adaptive-narrate "$P" benchmarks/bench_adaptive_k.py --task narrate --target "$T" --draft $R/sp-a3-w128 \
  --visual-tokens 1024 --repeats 3
step adaptive-qa-25k "$P" benchmarks/bench_adaptive_k.py --visual-tokens 1024 25000  # 1k: in the file
echo "[$(date +%H:%M:%S)] done: results/long_workloads.json, results/adaptive_k.json"
