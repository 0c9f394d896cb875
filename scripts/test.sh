#!/usr/bin/env bash
# The test suite (CPU only): ruff, the docs site built with --strict, pytest; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
"${UV[@]}" sync --frozen --quiet
"${UV[@]}" run --frozen ruff check .
NO_MKDOCS_2_WARNING=1 "${UV[@]}" run --frozen mkdocs build --strict --quiet -d "$(mktemp -d)"  # docs/: a broken link fails
"${UV[@]}" run --frozen pytest "$@"
