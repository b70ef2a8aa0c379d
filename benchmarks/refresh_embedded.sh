#!/usr/bin/env bash
# Re-measure every README figure that depends on the embedded Qwen2.5-VL target and its committed
# drafts, one heavy job at a time, after a new target was committed and
# `sparrow_vllm/draft/rebuild_defaults.sh` rebuilt the drafts, their test data and
# benchmarks/results/draft_eval.json (~1 h 50 on 2 cores; check_tau at 25k is ~48 min of it):
#   bash benchmarks/refresh_embedded.sh [DATA_DIR]     # DATA_DIR: the rebuild's data, default runs/drafts/data
# Each step's JSON + plot lands in benchmarks/results/ (the commands beside each README table);
# the tables are printed to runs/refresh/tables.md and the `make demo` transcript to
# runs/refresh/demo.txt; a step's log is runs/refresh/<step>.log. Steps already done are skipped
# (runs/refresh/<step>.done), so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-runs/drafts/data}
P=.venv/bin/python; S=.venv/bin/sparrow; R=runs/refresh
for v in 1k 4k 25k; do
  [ -f "$D/test$v/manifest.json" ] || { echo "no $D/test$v: run sparrow_vllm/draft/rebuild_defaults.sh first" >&2; exit 2; }
done
mkdir -p "$R"
STEPS_DIR=$R; source benchmarks/steps.sh
step target-128 "$S" eval-target --n 200 --frames 16
step target-1k "$S" eval-target --n 100 --frames 128
step target-long "$S" eval-target --from-data "$D/test4k" "$D/test25k"
step demo "$S" demo
grep -E "^(Q:|\[no speculation\]|\[sparrow\]|identical)" "$R/demo.log" > "$R/demo.txt"
for v in 1k 25k; do
  step "tau-$v" "$P" benchmarks/check_tau.py --data "$D/test$v" \
    --draft sparrow_vllm/assets/drafts/sparrow-default --out "benchmarks/results/check_tau_$v.json"
done
step load "$P" benchmarks/bench_load.py
step serve "$P" benchmarks/bench_serve.py
step offline "$P" benchmarks/bench_offline.py --visual-tokens 1024 4096 25000
for t in target drafts tau reliability serve offline; do
  echo "## $t"; "$P" benchmarks/report.py "$t"; echo
done > "$R/tables.md"
echo "[$(date +%H:%M:%S)] done: $R/tables.md, $R/demo.txt"
