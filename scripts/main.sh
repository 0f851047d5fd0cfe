#!/usr/bin/env bash
# scripts/main.sh: builds charlm, finds a corpus, trains the default char-level model, then evaluates it and samples.
#
#   bash scripts/main.sh [CORPUS]
#
# The corpus is, in order: the path given as $1; $CHARLM_DATA; data/tinyshakespeare.txt;
# a download of tiny Shakespeare into data/; and when that fails too, the repository's own
# docs and sources concatenated into data/fallback.txt, so the command always runs.
# data/ is gitignored: no corpus is ever committed. The run goes to runs/main (replaced on
# every run). Default model: latent attention, 4 layers, 4 heads, dim 128, ctx 64, 2000
# steps, a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

url=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
out=runs/main

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target charlm

corpus=${1:-${CHARLM_DATA:-}}
if [ -n "$corpus" ]; then
  [ -f "$corpus" ] || { echo "main.sh: corpus $corpus does not exist" >&2; exit 1; }
elif [ -s data/tinyshakespeare.txt ]; then
  corpus=data/tinyshakespeare.txt
else
  mkdir -p data
  echo "main.sh: downloading tiny Shakespeare from $url"
  if { command -v curl >/dev/null && curl -fsSL --connect-timeout 10 --max-time 60 -o data/tinyshakespeare.txt.part "$url"; } ||
     { command -v wget >/dev/null && wget -q --timeout=20 -O data/tinyshakespeare.txt.part "$url"; }; then
    mv data/tinyshakespeare.txt.part data/tinyshakespeare.txt
    corpus=data/tinyshakespeare.txt
  else
    rm -f data/tinyshakespeare.txt.part
    echo "main.sh: the download failed; training on this repository's own docs and sources instead (data/fallback.txt)"
    find . -path './build*' -prune -o -path ./runs -prune -o -path ./data -prune -o -path ./.git -prune -o \
      -type f \( -name '*.md' -o -name '*.h' -o -name '*.cpp' -o -name '*.py' -o -name '*.sh' -o -name '*.txt' \) \
      -print | LC_ALL=C sort | xargs cat > data/fallback.txt
    corpus=data/fallback.txt
  fi
fi
echo "main.sh: corpus $corpus ($(wc -c < "$corpus") bytes)"

rm -rf "$out"
./build/charlm train --data "$corpus" --out "$out"

# The report above ends with the test split's metrics and a sample. The other two commands:
# `eval` on the test split cut out as a file (the last bytes after floor(0.9 N) + floor(0.05 N),
# the default --split) prints the same test loss again, from the saved checkpoint.
bytes=$(wc -c < "$corpus")
test_bytes=$(awk -v n="$bytes" 'BEGIN { printf "%d", n - int(n * 0.9) - int(n * 0.05) }')
tail -c "$test_bytes" "$corpus" > "$out/test_split.txt"
echo
./build/charlm eval --ckpt "$out" --data "$out/test_split.txt"
echo
./build/charlm sample --ckpt "$out" --tokens 400 --seed 7
echo
echo "main.sh: checkpoints, metrics.jsonl and loss.svg are in $out/"
