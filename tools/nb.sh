#!/usr/bin/env bash
# Rebuild notebooks from their paired scripts: sync nbs/_py/NAME.py -> nbs/NAME.ipynb, export the package,
# Restart & Run All (outputs stored for the book), clean, and re-sync so both sides agree.
# Usage: tools/nb.sh 01_gaussian [02_relu ...]   (no argument: every notebook)
set -euo pipefail
# One torch/OpenMP thread unless the caller says otherwise: on a small machine shared with other work, a second
# thread that gets descheduled stalls every parallel region (chapters ran ten times slower on two threads).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then for f in nbs/_py/*.py; do names+=("$(basename "$f" .py)"); done; fi
for n in "${names[@]}"; do jupytext --quiet --sync "nbs/_py/$n.py"; done
nbdev_export
for n in "${names[@]}"; do
  echo "executing $n"
  log=$(mktemp)
  if ! (cd nbs && jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 "$n.ipynb") >"$log" 2>&1; then
    tail -40 "$log"; echo "FAILED: $n"; exit 1
  fi
done
nbdev_export
for n in "${names[@]}"; do nbdev_clean --fname "nbs/$n.ipynb"; done
for n in "${names[@]}"; do jupytext --quiet --sync "nbs/$n.ipynb"; done
