#!/usr/bin/env bash
# Put back, from the last commit, the git-tracked files under the given folders that are missing
# from the working tree (what DVC removed before rerunning a stage that was then interrupted).
# Touches nothing else: no file that exists, no untracked file.
set -euo pipefail
cd "$(dirname "$0")/.."
git rev-parse --git-dir >/dev/null 2>&1 || exit 0
missing="$(git ls-files --deleted -- "$@")"
if [ -n "$missing" ]; then
  printf '%s\n' "$missing" | while read -r f; do git checkout -- "$f"; done
  echo "restored from the last commit: $(printf '%s' "$missing" | tr '\n' ' ')" >&2
fi
