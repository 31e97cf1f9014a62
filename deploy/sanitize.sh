#!/usr/bin/env bash
# The sanitizer run: configures build-asan/ (or $TESSERA_SANITIZE_BUILD_DIR) with clang,
# AddressSanitizer + UndefinedBehaviorSanitizer and the libFuzzer targets (CPU only), builds
# what the tests labelled `fuzz` and `soak` run, and runs them: every fuzz target over its
# corpus for TESSERA_FUZZ_SECONDS (tests/fuzz/CMakeLists.txt), and the soak test when the
# tree has one. Extra arguments go to ctest, e.g. deploy/sanitize.sh -V.
#
# The whole suite under the sanitizers is `ctest` in that directory after
# `cmake --build build-asan`; it takes a while.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TESSERA_SANITIZE_BUILD_DIR:-$root/build-asan}"
labels='fuzz|soak'

"$root/deploy/setup.sh"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DTESSERA_CUDA=OFF -DTESSERA_SANITIZE=address,undefined -DTESSERA_FUZZERS=ON >/dev/null
fi

# Build only what those tests run, not the whole tree: the fuzzers and the tessera binary
# (which the soak test drives). ctest lists a test's command only once its program exists, so
# a labelled test that still has none needs something else: then everything is built.
ninja -C "$build" -j "$(nproc)" fuzzers tessera
unbuilt="$(ctest --test-dir "$build" -L "$labels" --show-only=json-v1 | python3 -c '
import json, sys
print(sum("command" not in test for test in json.load(sys.stdin).get("tests", [])))')"
if [ "$unbuilt" -gt 0 ]; then
  ninja -C "$build" -j "$(nproc)"
fi
ctest --test-dir "$build" -L "$labels" -j "$(nproc)" --no-tests=error --output-on-failure "$@"
