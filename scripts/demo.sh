#!/usr/bin/env bash
# The demo: the whole pipeline with `dvc repro` on the embedded digits dataset, CPU is enough.
# Extra arguments go to `dvc repro` (e.g. a stage name, or --force).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
"${UV[@]}" sync --frozen --quiet
export VITNAS_PIPELINE_RUN_ID="${VITNAS_PIPELINE_RUN_ID:-demo-$(date +%Y%m%d-%H%M%S)}"
# DVC removes a stage's outputs before it reruns it, git-tracked ones too (metrics.json, the plotted
# series): on Ctrl-C put back the committed ones it removed, so `git status` stays clean.
trap 'scripts/restore-tracked.sh artifacts; exit 130' INT TERM
"${UV[@]}" run --frozen dvc repro "$@"
"${UV[@]}" run --frozen dvc metrics show
echo "MLflow: ${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} (pipeline run ${VITNAS_PIPELINE_RUN_ID}); browse with:"
echo "  uv run mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}   # then \"Model training\" at the top left"
