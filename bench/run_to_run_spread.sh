#!/usr/bin/env bash
# Where the demo's run-to-run spread comes from (README, "Where the spread between runs comes from"): the short
# run of tests/test_demo_learns.py (600 steps, 8 training voices, 250 CTC-only steps), with one factor changed at
# a time: nothing (the same run twice), the run's seed, the corpus, the thread count. About 25 minutes on 2 cores
# (two 1-thread runs at a time). Results: OUT/<run>/metrics.json; OUT defaults to runs/variance.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/variance}
OSUM=${OSUM:-.venv/bin/osum}
mkdir -p "$OUT"
SHORT="trainer.max_steps=600 trainer.val_check_interval=600 trainer.enable_progress_bar=false loss.ce_start_step=250"
for k in 1 2; do
  "$OSUM" data synth --tasks asr,ved --seed "$k" "$OUT/data$k" train_per_task=300 eval_per_task=30 \
    "train_voices=[m1,m2,m3,m4,m5,f1,f2,f3]" > "$OUT/synth$k.log" 2>&1
done
data() {  # the corpus made with seed $1, as manifests (so that the run's seed does not make another corpus)
  local d="$OUT/data$1"
  echo "data.train=[$d/asr/train.jsonl,$d/ved/train.jsonl] data.val=[$d/asr/dev.jsonl,$d/ved/dev.jsonl]" \
       "data.test=[$d/asr/test.jsonl,$d/ved/test.jsonl]"
}
fit() {  # fit NAME overrides...
  # shellcheck disable=SC2086
  "$OSUM" fit --tasks asr,ved --out "$OUT/$1" --overwrite $SHORT "${@:2}" > "$OUT/$1.log" 2>&1
}
# shellcheck disable=SC2046
{
  fit c1_s1_t1 seed=1 threads=1 $(data 1) & fit c1_s1_t1_again seed=1 threads=1 $(data 1) & wait
  fit c1_s2_t1 seed=2 threads=1 $(data 1) & fit c1_s3_t1 seed=3 threads=1 $(data 1) & wait
  fit c2_s1_t1 seed=1 threads=1 $(data 2) & fit c2_s2_t1 seed=2 threads=1 $(data 2) & wait
  fit c1_s1_t2 seed=1 threads=2 $(data 1)
}
for run in c1_s1_t1 c1_s1_t1_again c1_s2_t1 c1_s3_t1 c2_s1_t1 c2_s2_t1 c1_s1_t2; do  # corpus, seed, threads
  printf '%s ' "$run"
  .venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); print('ASR WER %.3f, VED accuracy %.3f' % (m['asr']['wer'], m['ved']['accuracy']))" "$OUT/$run/metrics.json"
done
