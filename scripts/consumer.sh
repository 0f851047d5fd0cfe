#!/usr/bin/env bash
# scripts/consumer.sh: installs latentgrad to a temporary prefix, then builds and runs examples/consumer against it.
#
#   bash scripts/consumer.sh [BUILD_DIR]      (default: build, the Release build of scripts/test.sh)
#
# What a user of the installed library relies on: the prefix alone is enough (the consumer is
# copied out of this tree, and nothing installed names it), every installed header compiles on
# its own and without warnings under -Wall -Wextra -Werror, no machine-specific or sanitizer flag
# reaches a consumer, and the program (its own layer, trained with AdamW, saved, read back) passes.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bash scripts/deps.sh
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target lg_nn

work=$(mktemp -d /tmp/latentgrad-consumer.XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
echo "consumer.sh: installed to $prefix: $(find "$prefix" -type f | wc -l) files"

fail() {
  echo "consumer.sh: $*" >&2
  exit 1
}
package_files=("$prefix"/lib*/cmake/latentgrad/*.cmake "$prefix"/lib*/pkgconfig/latentgrad.pc)
if grep -n -E -e '-march|-mtune|-mavx|-mprefer-vector-width|-fsanitize|-fno-math-errno|-fno-trapping-math' \
  "${package_files[@]}"; then
  fail "a compile flag of latentgrad's own build leaks into the package (above)"
fi
if grep -r -n -I -F "$PWD" "$prefix"; then
  fail "the install refers to the source tree (above)"
fi

export PKG_CONFIG_PATH=$(dirname "$prefix"/lib*/pkgconfig/latentgrad.pc)
strict=(-Wall -Wextra -Werror)
# Each public header on its own, with the flags pkg-config gives (-I, not CMake's -isystem, so
# warnings in the headers are not hidden).
find "$prefix/include" -name '*.h' | sort |
  xargs -P "$(nproc)" -I{} sh -c 'header=$1; shift; echo "#include \"$header\"" | g++ -x c++ -fsyntax-only "$@" -' _ {} \
    "${strict[@]}" $(pkg-config --cflags latentgrad) ||
  fail "an installed header does not compile on its own"
echo "consumer.sh: $(find "$prefix/include" -name '*.h' | wc -l) installed headers compile on their own"

cp -r examples/consumer "$work/src"
cmake -S "$work/src" -B "$work/cmake-build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_FLAGS="${strict[*]}" >/dev/null
cmake --build "$work/cmake-build" -j "$(nproc)" >/dev/null
echo "consumer.sh: built with CMake (find_package); running it"
"$work/cmake-build/consumer" "$work/model-cmake.safetensors"

g++ -O2 "${strict[@]}" "$work/src/main.cpp" -o "$work/consumer-pkg-config" $(pkg-config --cflags --libs latentgrad)
echo "consumer.sh: built with g++ and pkg-config; running it"
"$work/consumer-pkg-config" "$work/model-pkg-config.safetensors"
echo "consumer.sh: ok"
