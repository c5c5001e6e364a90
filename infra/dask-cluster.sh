#!/usr/bin/env bash
# Start a Dask cluster that the flows can use instead of their local one.
#
#   infra/dask-cluster.sh scheduler            # on one machine: dask scheduler on :8786
#   infra/dask-cluster.sh cpu tcp://host:8786  # on each CPU machine: one single-threaded worker per core
#   infra/dask-cluster.sh gpu tcp://host:8786  # on each GPU machine: dask-cuda, one worker per GPU
#                                              #   (needs: pip install -e '.[gpu]')
#   infra/dask-cluster.sh download tcp://host:8786  # on each download machine: one worker whose threads
#                                              #   each run a slice (img2dataset child processes);
#                                              #   SLICES_PER_MACHINE, default nproc / PROCESSES_PER_SLICE
# Then point the flows at it: DASK_SCHEDULER_ADDRESS=tcp://host:8786 (or the flow's dask_address).
# Workers must run this project's code: the same checkout and virtual environment on every machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
case "${1:-}" in
  scheduler) exec "$BIN/dask" scheduler --host "${DASK_HOST:-0.0.0.0}" --port "${DASK_PORT:-8786}" ;;
  cpu) exec "$BIN/dask" worker "${2:?scheduler address}" --nworkers "$(nproc)" --nthreads 1 ;;
  gpu) exec "$BIN/dask" cuda worker "${2:?scheduler address}" ;;
  download) exec "$BIN/dask" worker "${2:?scheduler address}" --nworkers 1 \
      --nthreads "${SLICES_PER_MACHINE:-$(( $(nproc) / ${PROCESSES_PER_SLICE:-1} > 0 ? $(nproc) / ${PROCESSES_PER_SLICE:-1} : 1 ))}" ;;
  *) echo "usage: $0 scheduler | cpu ADDRESS | gpu ADDRESS | download ADDRESS" >&2; exit 2 ;;
esac
