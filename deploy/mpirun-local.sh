#!/usr/bin/env bash
# mpirun for one machine with fewer cores than ranks (laptops, CI): oversubscribes, lets
# idle ranks yield their core, and allows running as root (containers). Arguments are
# mpirun's, e.g.  deploy/mpirun-local.sh -np 2 build/tessera comm-bench
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 "$@"
