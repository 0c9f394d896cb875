# Sourced by the other scripts: find uv, or install it into a private venv (only Python 3.11 needed).
if command -v uv >/dev/null 2>&1; then
  UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  UV=(python3 -m uv)
else
  if [ ! -x .tools/uv/bin/uv ]; then
    echo "uv not found: installing it into .tools/uv (python3 -m venv + pip install uv)" >&2
    python3 -m venv .tools/uv && .tools/uv/bin/python -m pip install --quiet uv
  fi
  UV=(.tools/uv/bin/uv)
fi
export UV_PYTHON="${UV_PYTHON:-3.11}"
