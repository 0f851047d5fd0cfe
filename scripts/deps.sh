#!/usr/bin/env bash
# scripts/deps.sh: installs the Debian packages the build needs (as root), or prints the command to run.
set -euo pipefail
# libopenblas-openmp-dev: OpenBLAS on the same OpenMP threads as our kernels (see CMakeLists.txt)
# openmpi-bin, libopenmpi-dev: training on several processes or machines (dist/)
packages=(g++ cmake make libopenblas-dev libopenblas-openmp-dev libfmt-dev doctest-dev openmpi-bin libopenmpi-dev)
# nlohmann-json3-dev: reads and writes the JSON of checkpoints, metrics and safetensors headers (core/json_io.h)
packages+=(nlohmann-json3-dev)
# pkg-config: scripts/consumer.sh builds the example consumer with `pkg-config --cflags --libs latentgrad`
packages+=(pkg-config)
# libcli11-dev: charlm's flags, help and --config files (models/charlm_cli.cpp, charlm_flags.cpp)
packages+=(libcli11-dev)
# clang-14, libclang-rt-14-dev, libomp-14-dev: libFuzzer and clang's OpenMP for the fuzz targets (scripts/fuzz.sh)
packages+=(clang-14 libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing packages: ${missing[*]}" >&2
  echo "run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
