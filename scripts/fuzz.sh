#!/usr/bin/env bash
# scripts/fuzz.sh: builds the libFuzzer targets (fuzz/, in build-fuzz/) and runs each for SECONDS (default 60).
#
# usage: scripts/fuzz.sh [SECONDS]
# Each target starts from its committed seeds (fuzz/corpus/TARGET/), fresh seeds from today's
# writers (make_seeds) and what earlier runs found (build-fuzz/corpus/TARGET/, where new inputs
# go), with its dictionary (fuzz/dict/TARGET.dict). A crashing input is saved as
# build-fuzz/crashes/TARGET/crash-* (or leak-*, timeout-*, oom-*); replay it with
# build-fuzz/TARGET FILE. Exits non-zero when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]   (SECONDS per target, a positive integer)" >&2
  exit 2
fi
bash scripts/deps.sh
cmake -S fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
cmake --build build-fuzz -j "$(nproc)"

rm -rf build-fuzz/seeds build-fuzz/crashes
build-fuzz/make_seeds build-fuzz/seeds
# Leaks and undefined behaviour are findings too; one thread per target keeps runs reproducible.
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 OMP_NUM_THREADS=1

failed=0
total=0
printf '%-18s %12s %10s %8s\n' target executions exec/s crashes
for target in fuzz_safetensors fuzz_checkpoint fuzz_corpus fuzz_cli; do
  mkdir -p "build-fuzz/corpus/$target" "build-fuzz/crashes/$target"
  log=build-fuzz/$target.log
  status=0
  "build-fuzz/$target" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -dict="fuzz/dict/$target.dict" -artifact_prefix="build-fuzz/crashes/$target/" \
    "build-fuzz/corpus/$target" "fuzz/corpus/$target" "build-fuzz/seeds/$target" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashes=$(find "build-fuzz/crashes/$target" -type f | wc -l)
  printf '%-18s %12s %10s %8s\n' "$target" "${runs:-?}" "${speed:-?}" "$crashes"
  total=$((total + ${runs:-0}))
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "  $target failed (exit $status): see $log" >&2
    grep -m 3 -E '^==[0-9]+==ERROR|runtime error|what\(\)|deadly signal' "$log" | sed 's/^/    /' >&2 || true
  fi
done
printf '%-18s %12s\n' total "$total"
exit "$failed"
