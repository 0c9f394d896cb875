# Sourced by the other scripts: find uv, or install it with pip (only Python 3.11 is needed).
if command -v uv >/dev/null 2>&1; then
  UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  UV=(python3 -m uv)
else
  echo "uv not found: installing it with pip (python3 -m pip install --user uv)" >&2
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  UV=(python3 -m uv)
fi
export UV_PYTHON="${UV_PYTHON:-3.11}"
