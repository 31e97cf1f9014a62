#!/usr/bin/env bash
# The aarch64 (Grace, GH200 hosts) cross build: configures build-aarch64/ (or
# $TESSERA_AARCH64_BUILD_DIR) with Debian's aarch64 cross compiler
# (cmake/toolchains/aarch64-linux-gnu.cmake), CUDA off and TESSERA_CORE_ONLY (runtime/core,
# the kernels and their unit tests), builds it and runs those tests under qemu-aarch64.
# Extra arguments go to ctest, e.g. deploy/cross-aarch64.sh -V.
#
# The arm64 abseil and GoogleTest come from the distribution as multiarch packages
# (dpkg --add-architecture arm64), installed beside the amd64 ones at the same version: they
# are Multi-Arch: same, and a newer arm64 version would drag the amd64 one along. Safe to run
# again: with everything present it installs nothing and rebuilds only what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TESSERA_AARCH64_BUILD_DIR:-$root/build-aarch64}"

host_packages=(cmake ninja-build g++-aarch64-linux-gnu qemu-user)
arm64_packages=(libabsl-dev libgtest-dev libgmock-dev)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for p in "${host_packages[@]}"; do
  installed "$p" || missing+=("$p")
done
for p in "${arm64_packages[@]}"; do
  if ! installed "$p:arm64"; then
    # Pin to the amd64 version when that is installed: Multi-Arch: same packages must match.
    version="$(dpkg-query -W -f='${Version}' "$p:amd64" 2>/dev/null || true)"
    missing+=("$p:arm64${version:+=$version}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "cross-aarch64.sh: need root or sudo to install: ${missing[*]}" >&2
      exit 1
    }
    sudo="sudo"
  fi
  echo "cross-aarch64.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64
  fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchains/aarch64-linux-gnu.cmake" \
    -DTESSERA_CUDA=OFF -DTESSERA_CORE_ONLY=ON >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
# The kernel tests spread their rows over one thread per core; under emulation each is slow
# enough that running the test binaries side by side gains nothing.
ctest --test-dir "$build" --output-on-failure "$@"
