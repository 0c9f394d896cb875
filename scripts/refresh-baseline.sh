#!/usr/bin/env bash
# Refresh the committed DVC baseline after a change to the code, params.yaml or dvc.yaml: the demo
# pipeline runs in a fresh clone of HEAD, and its dvc.lock and git-tracked results (each stage's
# metrics.json, the plotted series) are copied back here. Commit your change first, then what this
# writes. The test command fails while the baseline is stale (tests/test_contract.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! git diff --quiet HEAD -- src params.yaml dvc.yaml; then
  echo "error: src/, params.yaml or dvc.yaml differ from HEAD: commit them first (the baseline is HEAD's)" >&2
  exit 2
fi
work="$(mktemp -d)"
# the temporary clone this script made, nothing else; KEEP_CLONE=1 keeps it (its artifacts, its
# optuna.db, its mlflow.db: what the docs' screenshots show)
[ "${KEEP_CLONE:-0}" = 1 ] && echo "keeping $work" || trap 'rm -rf "$work"' EXIT
git clone -q . "$work/clone"
(cd "$work/clone" && VITNAS_PIPELINE_RUN_ID="baseline-$(git rev-parse --short HEAD)" \
  MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" ./scripts/demo.sh)
cp "$work/clone/dvc.lock" dvc.lock
(cd "$work/clone" && git ls-files --cached --others --exclude-standard artifacts) | while read -r f; do
  mkdir -p "$(dirname "$f")" && cp "$work/clone/$f" "$f"
done
git status --short dvc.lock artifacts
