# Sourced by scripts/serve and scripts/test: make .venv and install the project into it.
# $1: the extras to install ("" or "[dev]").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Pure Python, whatever the environment says (setup.py compiles only when asked to).
installed=0
env -u TENANT_GATEWAY_COMPILE .venv/bin/python -m pip install --quiet \
  --disable-pip-version-check -e ".${1:-}" >.venv/pip.log 2>&1 || installed=$?
grep -v "is ignored: it is neither a file nor a directory" .venv/pip.log || true
if [ "$installed" -ne 0 ]; then
  exit "$installed"
fi
