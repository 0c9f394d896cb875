#!/usr/bin/env bash
# The pipeline on Fashion-MNIST (configs/fashion-mnist.yaml), stage by stage into runs/fashion-mnist/
# (or $1). Needs the data: `apt-get install dataset-fashion-mnist`, or set data.root in the config.
# Stages that already finished are kept (delete a stage's folder to rerun it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
"${UV[@]}" sync --frozen --quiet
P=configs/fashion-mnist.yaml
R="${1:-runs/fashion-mnist}"
v() { "${UV[@]}" run --frozen vitnas "$@"; }
mkdir -p "$R"
[ -e "$R/data/dataset.json" ] || v data --params $P --out "$R/data"
[ -e "$R/supernet/supernet.pt" ] || v supernet --params $P --data "$R/data" --out "$R/supernet" \
  --checkpoints "$R/checkpoints/supernet" --resume
[ -e "$R/proxy/metrics.json" ] || v proxy --params $P --data "$R/data" --out "$R/proxy"
[ -e "$R/search/best_arch.json" ] || v search --params $P --data "$R/data" --supernet "$R/supernet/supernet.pt" \
  --out "$R/search"
[ -e "$R/slim/arch.json" ] || v slim --params $P --data "$R/data" --supernet "$R/supernet/supernet.pt" \
  --arch "$R/search/best_arch.json" --out "$R/slim"
[ -e "$R/retrain/arch.json" ] || v retrain --params $P --data "$R/data" --supernet "$R/supernet/supernet.pt" \
  --arch "$R/slim" --out "$R/retrain"
[ -e "$R/transfer/metrics.json" ] || v transfer --params $P --data "$R/data" --model "$R/retrain" --out "$R/transfer"
