#!/usr/bin/env bash
# Where the demo's run-to-run spread comes from (README, "Where the spread between runs comes from"): the short
# run of tests/test_demo_learns.py (600 steps, 8 training voices, 250 CTC-only steps), with one factor changed at
# a time: nothing (the same run twice), the run's seed, the corpus, the thread count. About 25 minutes on 2 cores
# (two 1-thread runs at a time). Results: OUT/<run>/metrics.json; OUT defaults to runs/variance.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/variance}
OSUM=${OSUM:-.venv/bin/osum}
PY=${PY:-$(dirname "$OSUM")/python}
mkdir -p "$OUT"
SHORT=(trainer.max_steps=600 trainer.val_check_interval=600 trainer.enable_progress_bar=false loss.ce_start_step=250)
for k in 1 2; do
  "$OSUM" data synth --tasks asr,ved --seed "$k" "$OUT/data$k" train_per_task=300 eval_per_task=30 \
    "train_voices=[m1,m2,m3,m4,m5,f1,f2,f3]" > "$OUT/synth$k.log" 2>&1
done

fit() {  # fit NAME CORPUS_SEED overrides...: the corpus made with that seed, as manifests (so that the run's
         # seed does not make another corpus)
  local name=$1 d="$OUT/data$2"
  rm -rf "${OUT:?}/$name"  # no stale metrics.json from an earlier run
  "$OSUM" fit --tasks asr,ved --out "$OUT/$name" --overwrite "${SHORT[@]}" \
    "data.train=[$d/asr/train.jsonl,$d/ved/train.jsonl]" "data.val=[$d/asr/dev.jsonl,$d/ved/dev.jsonl]" \
    "data.test=[$d/asr/test.jsonl,$d/ved/test.jsonl]" "${@:3}" > "$OUT/$name.log" 2>&1
}
pair() {  # two runs side by side, each on one thread; fails if either does
  local a b
  fit "$1" "$2" seed="$3" threads=1 & a=$!
  fit "$4" "$5" seed="$6" threads=1 & b=$!
  wait "$a"; wait "$b"
}
#    name            corpus seed   name            corpus seed
pair c1_s1_t1        1      1      c1_s1_t1_again  1      1
pair c1_s2_t1        1      2      c1_s3_t1        1      3
pair c2_s1_t1        2      1      c2_s2_t1        2      2
fit c1_s1_t2 1 seed=1 threads=2

for run in c1_s1_t1 c1_s1_t1_again c1_s2_t1 c1_s3_t1 c2_s1_t1 c2_s2_t1 c1_s1_t2; do  # corpus, seed, threads
  printf '%s ' "$run"
  "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print('ASR WER %.3f, VED accuracy %.3f' % (m['asr']['wer'], m['ved']['accuracy']))" "$OUT/$run/metrics.json"
done
