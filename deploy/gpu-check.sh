#!/usr/bin/env bash
# The GPU checks of Tessera on a machine that has a GPU and the CUDA 13 runtime but none of
# the Debian libraries Tessera links (gRPC, protobuf, abseil, Open MPI, ...), in two steps:
#
#   deploy/gpu-check.sh bundle [DIR]   here, after deploy/build.sh: packs the GPU test
#                                      binaries and `tessera` (stripped), every shared library
#                                      they need but glibc's and CUDA's, and Open MPI's plugins
#                                      and help files into DIR/bundle.tar.xz (default DIR:
#                                      build-gpu-bundle, about 20 MB)
#   deploy/gpu-check.sh run [DIR] [OUT] there, from the repository root: runs the `cuda`
#                                      tests, compares `tessera generate` on the GPU with the
#                                      CPU, and benchmarks decode; logs go to OUT (default
#                                      $OUT, else DIR/logs). Exit status: the number of
#                                      failed steps.
#
# CUDA's own libraries (cudart, cuBLAS, NCCL) are not bundled; `run` finds them under
# /usr/local/cuda, CUDA_HOME, or the Python packages nvidia-*-cu13.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-}"
bundle="${2:-$root/build-gpu-bundle}"

gpu_binaries=(tests/cuda/kernels_cuda_test tests/cuda/cuda_tensor_test tests/cuda/nccl_test
              tests/cuda/model_golden_cuda_test tessera)

make_bundle() {
  local build="${TESSERA_BUILD_DIR:-$root/build}"
  local ompi_lib=/usr/lib/x86_64-linux-gnu/openmpi/lib
  rm -rf "$bundle"
  mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/usr/lib/x86_64-linux-gnu/openmpi/lib" \
    "$bundle/usr/share" "$bundle/usr/bin"
  local objects=()
  for b in "${gpu_binaries[@]}"; do
    [ -x "$build/$b" ] || { echo "gpu-check: $build/$b is missing: build with CUDA first" >&2; exit 1; }
    strip -o "$bundle/bin/$(basename "$b")" "$build/$b"
    objects+=("$build/$b")
  done
  # Open MPI as Debian lays it out under /usr, so that OPAL_PREFIX=$bundle/usr relocates it.
  cp -r "$ompi_lib/openmpi3" "$bundle/usr/lib/x86_64-linux-gnu/openmpi/lib/"
  cp -r /usr/share/openmpi "$bundle/usr/share/"
  cp /usr/bin/orted /usr/bin/orterun "$bundle/usr/bin/"
  objects+=("$ompi_lib"/openmpi3/*.so /usr/bin/orted /usr/bin/orterun)
  # Every library those need, but the C library's own and CUDA's (the GPU machine has its own).
  ldd "${objects[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|librt|libpthread|libresolv|ld-linux[^/]*)\.so|/libcuda\.so|/usr/local/cuda|/libnvidia-|/libcu[a-z]*\.so|/libnccl\.so' |
    while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
  # Packed, since the folder is larger than what may travel to the GPU machine.
  local size
  size="$(du -sh "$bundle" | cut -f1)"
  tar -C "$bundle" -cJf "$bundle.tar.xz" . && rm -rf "$bundle" && mkdir -p "$bundle" &&
    mv "$bundle.tar.xz" "$bundle/bundle.tar.xz" || exit 1
  echo "gpu-check: $bundle/bundle.tar.xz ($size unpacked, $(du -sh "$bundle" | cut -f1) packed)"
  echo "  on the GPU machine, carry ${bundle#"$root"/} and run: deploy/gpu-check.sh run ${bundle#"$root"/}"
}

# Directories that hold a CUDA 13 library named $1, one per line.
cuda_dirs_with() {
  local name="$1"
  for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" "${CUDA_HOME:-/usr/local/cuda}/lib" \
           /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/$name" ] && echo "$d"
  done
  python3 - "$name" 2>/dev/null <<'EOF'
import glob, os, site, sys
for base in site.getsitepackages():
    for path in glob.glob(os.path.join(base, "nvidia", "**", sys.argv[1]), recursive=True):
        print(os.path.dirname(path))
EOF
}

run_checks() {
  local out="${3:-${OUT:-$bundle/logs}}"
  mkdir -p "$out"
  if [ ! -d "$bundle/bin" ]; then
    tar -C "$bundle" -xJf "$bundle/bundle.tar.xz" || { echo "gpu-check: no bundle in $bundle" >&2; exit 1; }
  fi
  local libs="$bundle/lib"
  for name in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    local dir
    dir="$(cuda_dirs_with "$name" | head -1)"
    if [ -z "$dir" ]; then echo "gpu-check: no $name on this machine" | tee -a "$out/summary.txt"; fi
    [ -n "$dir" ] && libs="$libs:$dir"
  done
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OPAL_PREFIX="$bundle/usr" PATH="$bundle/usr/bin:$PATH"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=false
  export TESSERA_CACHE_DIR="$out/cache"
  local mpirun=("$bundle/usr/bin/orterun" --oversubscribe --bind-to none)
  local failed=0
  step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records the outcome
    local name="$1"; shift
    local start=$SECONDS
    if ! "$@" >"$out/$name.log" 2>&1; then
      echo "FAILED $name ($((SECONDS - start)) s): see $name.log" | tee -a "$out/summary.txt"
      failed=$((failed + 1))
    elif grep -q 'SKIPPED \]' "$out/$name.log"; then  # no GPU seen: nothing was checked
      echo "SKIPPED $name ($((SECONDS - start)) s): see $name.log" | tee -a "$out/summary.txt"
      failed=$((failed + 1))
    else
      echo "ok     $name ($((SECONDS - start)) s)" | tee -a "$out/summary.txt"
    fi
  }
  nvidia-smi -L >"$out/gpus.txt" 2>&1
  local gpus
  gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"
  step cuda_tensor_test "$bundle/bin/cuda_tensor_test"
  step kernels_cuda_test "$bundle/bin/kernels_cuda_test"
  step nccl_test_np1 "${mpirun[@]}" -np 1 "$bundle/bin/nccl_test"
  step model_golden_cuda_test_np1 "${mpirun[@]}" -np 1 "$bundle/bin/model_golden_cuda_test"
  if [ "${gpus:-0}" -ge 2 ]; then
    step nccl_test_np2 "${mpirun[@]}" -np 2 "$bundle/bin/nccl_test"
    step model_golden_cuda_test_np2 "${mpirun[@]}" -np 2 "$bundle/bin/model_golden_cuda_test"
  fi
  # The same greedy text from the CPU and the GPU: the default model and checkpoints of
  # two families with tokenizers.
  compare_generate() {
    local model_flags=()
    [ -n "$1" ] && model_flags=(--model "$root/tests/golden/models/$1")
    local cpu gpu
    cpu="$("${mpirun[@]}" -np 1 "$bundle/bin/tessera" generate "${model_flags[@]}" \
      --prompt "The capital of France is" --max-tokens 12 2>/dev/null)"
    gpu="$("${mpirun[@]}" -np 1 "$bundle/bin/tessera" generate --device cuda "${model_flags[@]}" \
      --prompt "The capital of France is" --max-tokens 12)"
    echo "cpu: $cpu"
    echo "gpu: $gpu"
    [ -n "$gpu" ] && [ "$cpu" = "$gpu" ]
  }
  step generate_default compare_generate ""
  step generate_qwen2_chat compare_generate qwen2_chat
  step generate_glm_chat compare_generate glm_chat
  step bench_generate_cuda "${mpirun[@]}" -np 1 "$bundle/bin/tessera" bench generate --device cuda
  return "$failed"
}

case "$mode" in
  bundle) make_bundle ;;
  run) run_checks "$@" ;;
  *) sed -n '2,16p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
