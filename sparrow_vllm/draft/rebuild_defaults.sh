#!/usr/bin/env bash
# Rebuild the committed drafts of an embedded target and their test figures (one job at a time):
#   bash sparrow_vllm/draft/rebuild_defaults.sh [RUN_DIR] [ARCH]
# ARCH: qwen2.5-vl (default) or llava-onevision (drafts sparrow-llavaov / eagle3-llavaov); ~3.5 h
# on 2 cores, 16 test videos at 25k included (LLAVA_SHORT=1: the committed LLaVA-OV drafts'
# short clips only, evaluated at ~1k, ~15 min).
# Both drafts of a family train on the same mix of video lengths (256 clips of 16 frames, 32
# videos of ~4k and 16 of ~25k visual tokens: the target's own answers at each length, which
# drift from its short-clip answers as videos grow; 16 at 25k rather than 8: docs/draft-study.md
# section E) and are evaluated at ~1k, ~4k and ~25k.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH=${2:-qwen2.5-vl}
S=".venv/bin/sparrow"
T=$($S build-target --arch "$ARCH" | tail -1)
SIZES="1k 4k 25k"; LONG="train4k:32:1000:4096:4 train25k16:16:2000:25000:1"
if [ "$ARCH" = qwen2.5-vl ]; then
  R=${1:-runs/drafts}; SP=sparrow-default; EA=eagle3-baseline; EVAL_OUT=draft_eval.json; TH=1
else
  R=${1:-runs/drafts-$ARCH}; SP=sparrow-llavaov; EA=eagle3-llavaov; EVAL_OUT=draft_eval_$ARCH.json; TH=2
  [ "${LLAVA_SHORT:-0}" = 1 ] && { SIZES="1k"; LONG=""; }
fi
mkdir -p "$R/logs" "$R/eval"
L=2,8,15,22,27  # TH: the threads the committed short-clip data was extracted with
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$R/pipeline.log"; }
log "data train";  $S data --target "$T" --out "$R/data/train" --split train --n 256 --frames 16 --all-positions --layers $L --threads $TH > "$R/logs/data_train.log" 2>&1
log "data val";    $S data --target "$T" --out "$R/data/val" --split val --n 24 --frames 16 --all-positions --layers $L --threads $TH > "$R/logs/data_val.log" 2>&1
MIX="$R/data/train"
for spec in $LONG; do  # name:n:start:visual tokens:shard size (seeds apart from the short clips')
  IFS=: read -r name n start vt shard <<< "$spec"
  log "data $name"; $S data --target "$T" --out "$R/data/$name" --split train --n "$n" --start "$start" --visual-tokens "$vt" --all-positions --layers 2,15,27 --shard-size "$shard" --threads 2 > "$R/logs/data_$name.log" 2>&1
  MIX="$MIX $R/data/$name"
done
for v in $SIZES; do  # test videos: n, visual tokens, shard size, layers
  case $v in
    1k) args="--n 16 --visual-tokens 1024 --shard-size 8 --layers $L" ;;
    4k) args="--n 16 --visual-tokens 4096 --shard-size 8 --layers 2,15,27" ;;
    25k) args="--n 16 --visual-tokens 25000 --shard-size 1 --layers 2,15,27" ;;
  esac
  log "data test$v"; $S data --target "$T" --out "$R/data/test$v" --split test $args --all-positions --threads 2 > "$R/logs/data_test$v.log" 2>&1
done
# Sparrow first, evaluated and copied before the EAGLE-3 baseline (~1 h of training here) starts.
TR="--data $MIX --val-data $R/data/val --steps 800 --seed 0 --mtp-depth 5 --eval-every 200 --ckpt-every 200 --resume --threads 2"
for d in $SP $EA; do
  if [ "$d" = "$SP" ]; then recipe="--recipe sparrow --anchor-layers 15 --window 128"; else recipe="--recipe eagle3 --anchor-layers 2,15,27"; fi
  log "train $d"; $S train $TR --out "$R/$d" $recipe > "$R/logs/train_$d.log" 2>&1
  for v in $SIZES; do
    log "eval $d $v"; $S eval-draft --target "$T" --draft "$R/$d" --data "$R/data/test$v" --k 1 3 5 --threads 2 --out "$R/eval/$d.$v.json" > "$R/logs/eval_$d.$v.log" 2>&1
  done
  if [ "$d" = "$SP" ]; then home=sparrow_vllm/assets/drafts; else home=benchmarks/drafts; fi  # baselines: not installed
  mkdir -p "$home/$d"
  cp "$R/$d/config.json" "$R/$d/model.safetensors" "$R/$d/training.json" "$home/$d/"
done
.venv/bin/python - "$R" "$SP $EA" "$SIZES" "$EVAL_OUT" <<'PY'
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
reports = [json.loads((r / "eval" / f"{d}.{v}.json").read_text())
           for v in sys.argv[3].split() for d in sys.argv[2].split()]
Path("benchmarks/results", sys.argv[4]).write_text(json.dumps(reports, indent=1))
PY
log "done"
