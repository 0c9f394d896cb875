#!/usr/bin/env bash
# The test suite (CPU only); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
"${UV[@]}" sync --frozen --quiet
"${UV[@]}" run --frozen ruff check .
"${UV[@]}" run --frozen pytest "$@"
