#!/usr/bin/env bash
# Installs the dependencies (deploy/setup.sh), configures and builds Tessera into build/
# (or $TESSERA_BUILD_DIR). Extra arguments go to CMake's configure step, e.g.
#   deploy/build.sh -DTESSERA_CUDA=OFF
# Safe to run again: an up-to-date build does nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TESSERA_BUILD_DIR:-$root/build}"

"$root/deploy/setup.sh"
if [ ! -f "$build/build.ninja" ] || [ $# -gt 0 ]; then
  cmake -S "$root" -B "$build" -G Ninja "$@" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
