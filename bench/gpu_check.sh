#!/usr/bin/env bash
# The GPU check of issue 20: on one NVIDIA GPU, unattended, under 5 minutes, one JSON file (bench/gpu_check.py
# says what each part measures; BENCHMARKS.md, "GPU check").
#   bench/gpu_check.sh [OUT.json] [--only PART,...] [--peak-tflops 989]   # OUT: bench/results/gpu_check.json
#   bench/gpu_check.sh OUT.json --smoke                                    # CPU, tiny sizes (or GPU_CHECK_SMOKE=1)
# PYTHON picks the interpreter (default .venv/bin/python, else python3).
set -u
out=bench/results/gpu_check.json
case "${1:-}" in "" | -*) ;; *) out=$1; shift ;; esac
case $out in /*) ;; *) out=$PWD/$out ;; esac  # the path as given, before the cd below
cd "$(dirname "$0")/.." || exit 1
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
smoke=${GPU_CHECK_SMOKE:-0}
for arg in "$@"; do [ "$arg" = --smoke ] && smoke=1; done
# gpu_check.py keeps its parts within 280 s (600 s in the smoke run) and writes the JSON on SIGTERM; this
# limit is the backstop, 5 minutes less a margin (GPU_CHECK_TIMEOUT, with --budget-seconds, for another).
limit=${GPU_CHECK_TIMEOUT:-295}
[ "$smoke" = 1 ] && limit=${GPU_CHECK_TIMEOUT:-615}
rm -f "$out"
timeout --kill-after=10 "$limit" "$python" bench/gpu_check.py "$out" "$@"
status=$?
if [ ! -s "$out" ]; then  # the JSON is always written: here when gpu_check.py could not even start
  mkdir -p "$(dirname "$out")"
  error="bench/gpu_check.py exited with status $status before writing this file"
  printf '{"check": "bench/gpu_check.sh (issue 20)", "complete": false, "error": "%s", "parts": {' "$error" >"$out"
  sep=""
  for part in mfu_qwen05b mfu_osum7b_lora vs_qwen2_audio fit_ddp fit_deepspeed; do
    printf '%s"%s": {"ok": false, "error": "%s"}' "$sep" "$part" "$error" >>"$out"
    sep=", "
  done
  printf '}}\n' >>"$out"
fi
exit $status
