#!/usr/bin/env bash
# scripts/test.sh: installs what is missing, builds (Release; --sanitize: with sanitizers; --portable: without -march=native), runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
build=build
flags=(-DCMAKE_BUILD_TYPE=Release)
if [ "${1:-}" = "--sanitize" ]; then
  build=build-sanitize
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DLG_SANITIZE=ON)
elif [ "${1:-}" = "--portable" ]; then
  build=build-portable
  flags=(-DCMAKE_BUILD_TYPE=Release -DLATENTGRAD_NATIVE=OFF)
fi
cmake -S . -B "$build" "${flags[@]}" >/dev/null
start=$(date +%s)
cmake --build "$build" -j "$(nproc)"
echo "build time: $(( $(date +%s) - start )) s"
cd "$build" && ctest --output-on-failure
