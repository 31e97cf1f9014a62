#!/usr/bin/env bash
# Checks by hand (not a timed CI test) that the memory read bandwidth probe of the benches
# (launcher/read_bandwidth.h) is a limit: on the ~0.5B random Llama, the rate at which
# `tessera bench generate` decodes reads (read GB/s) must not exceed the probe's figure
# measured in the same run. Prints both for every run; exits 1 if any run breaks the limit.
# On a shared or busy machine both figures swing from run to run: run it when it is quiet
# (each run prints the load averages after it).
#   deploy/check-read-bandwidth.sh [path/to/tessera] [runs]   (defaults: build/tessera, 3)
set -euo pipefail
tessera=${1:-build/tessera}
runs=${2:-3}
broken=0
for run in $(seq "$runs"); do
  out=$("$tessera" bench generate 2>/dev/null)
  probe=$(sed -n 's/.*memory read bandwidth \([0-9.]*\) GB\/s.*/\1/p' <<<"$out")
  # The row's columns end: ... read MB/tok, read GB/s, limit t/s, ratio.
  decode=$(awk '/^llama-0.5b/ { print $(NF - 2) }' <<<"$out")
  if [[ -z "$probe" || -z "$decode" ]]; then
    echo "run $run: could not read the figures from:" >&2
    echo "$out" >&2
    exit 2
  fi
  verdict=$(awk -v p="$probe" -v d="$decode" 'BEGIN { print (d <= p) ? "ok" : "BROKEN" }')
  # The 1, 5 and 15 minute load averages after the run: a busy machine disturbs both figures.
  load=$(cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null || echo "?")
  echo "run $run: probe $probe GB/s, 0.5B decode reads $decode GB/s: $verdict (load $load)"
  [[ "$verdict" == ok ]] || broken=1
done
exit "$broken"
