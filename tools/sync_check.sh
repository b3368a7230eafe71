#!/usr/bin/env bash
# Fail unless the notebooks, their paired nbs/_py scripts and the exported modules agree.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(git status --porcelain -- nbs netmoments)
nbdev_export
nbdev_clean
jupytext --quiet --sync nbs/*.ipynb
after=$(git status --porcelain -- nbs netmoments)
if [ "$before" != "$after" ]; then
  echo "sync-check: export/clean/jupytext --sync changed the tree; run 'make sync' (or tools/nb.sh) and commit:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  git --no-pager diff --stat -- nbs netmoments >&2
  exit 1
fi
echo "sync-check: notebooks, paired scripts and modules agree"
