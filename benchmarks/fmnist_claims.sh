#!/usr/bin/env bash
# Every Fashion-MNIST claim benchmark in order (the later ones read the supernets the first trains).
# Each script stores its finished units in benchmarks/results/<script>.json and resumes from it, so
# this can be stopped and rerun. Tables go to benchmarks/results/<script>.md.
# Needs Fashion-MNIST: `apt-get install dataset-fashion-mnist`, or pass --root DIR (the idx files).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
for script in fmnist_supernet fmnist_ranking fmnist_search fmnist_slim fmnist_glit; do
  echo "== $script" >&2
  "${UV[@]}" run --frozen python "benchmarks/$script.py" "$@" | tee "benchmarks/results/$script.md"
done
