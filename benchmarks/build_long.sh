#!/usr/bin/env bash
# The long-workload target and drafts the README's `bench_long.py` commands read, built from
# the committed embedded target: runs/target-long-all/target200 (docs/target.md O) and
# runs/long/{ea,sp-a3-w128,sp-w128,sp-a3-w128-4k} (docs/draft-study.md I), one heavy job at a
# time (~3.5 h on 2 CPU cores: ~67 min of target, ~45 + ~25 min of data, ~11 min a Sparrow
# draft, ~20 min the EAGLE-3 one):
#   bash benchmarks/build_long.sh            # make setup first
# Every step resumes: a finished step is skipped (runs/long/build/<step>.done; benchmarks/steps.sh), and the target
# and draft trainings continue from their checkpoints. A step's log is runs/long/build/<step>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sparrow; T=runs/target-long-all/target200; R=runs/long; B=$R/build
mkdir -p "$B"
STEPS_DIR=$B; source benchmarks/steps.sh
# The target: 200 steps of a 400-step schedule (learning rate at half its peak there).
step target-train "$S" train-target --out runs/target-long-all --steps 400 --stop-at 200 --accum 4 --lr 5e-4 \
  --seed 17 --lora-rank 16 --lora-lr 1e-3 --perception-level object-motion --perception-steps 50 \
  --perception-weight 1.0 --questions-per-clip 8 --long-share 0.5 --long-all-turns --snapshot-every 50 \
  --log-every 10 --init sparrow_vllm/assets/sparrow-qwen25vl-smollm2/vision_parts.safetensors
step target-build "$S" build-target --vision-parts runs/target-long-all/vision_parts-step200.safetensors --out "$T"
# Self-distilled data: the target's own answers and its states at layers 2, 15, 27.
D=(--target "$T" --layers 2,15,27 --all-positions --max-new-tokens 256 --threads 2)
step data-train-chat "$S" data "${D[@]}" --out $R/data/train-chat --split train --task chat --n 128 --visual-tokens 1024
step data-train-narrate "$S" data "${D[@]}" --out $R/data/train-narrate --split train --task narrate --n 64 --visual-tokens 1024
step data-train-stream "$S" data "${D[@]}" --out $R/data/train-stream --split train --task stream --n 64 --visual-tokens 1024
step data-train-qa "$S" data "${D[@]}" --out $R/data/train-qa --split train --n 256 --frames 16
step data-val-chat "$S" data "${D[@]}" --out $R/data/val-chat --split val --task chat --n 16 --visual-tokens 1024
for t in chat narrate stream; do
  s=64; [ $t = chat ] && s=128
  step data-train4k-$t "$S" data --target "$T" --layers 2,15,27 --max-new-tokens 256 --threads 2 \
    --out $R/data/train4k-$t --split train --task $t --start $s --n 32 --visual-tokens 4096 --shard-size 8
done
MIX=($R/data/train-chat $R/data/train-narrate $R/data/train-stream $R/data/train-qa)
TR=(--val-data $R/data/val-chat --steps 800 --seed 0 --mtp-depth 5 --threads 2 --resume)
step ea "$S" train --data "${MIX[@]}" --out $R/ea --recipe eagle3 "${TR[@]}"
step sp-a3-w128 "$S" train --data "${MIX[@]}" --out $R/sp-a3-w128 --recipe sparrow --anchor-layers 2,15,27 --window 128 "${TR[@]}"
step sp-w128 "$S" train --data "${MIX[@]}" --out $R/sp-w128 --recipe sparrow --anchor-layers 15 --window 128 "${TR[@]}"
step sp-a3-w128-4k "$S" train --data "${MIX[@]}" $R/data/train4k-{chat,narrate,stream} --out $R/sp-a3-w128-4k \
  --recipe sparrow --anchor-layers 2,15,27 --window 128 "${TR[@]}"
echo "[$(date +%H:%M:%S)] done: $T, $R/{ea,sp-a3-w128,sp-w128,sp-a3-w128-4k}"
