# Sourced by scripts/serve, scripts/test and scripts/lock: make .venv exactly what a lock file in
# requirements/ says, then install the project into it (editable, pure Python).
# $1: the lock to install, "serve" (the runtime) or "dev" (tests, tools, benchmarks).
# Every package comes from the lock with its hash checked; the project is built with the locked
# setuptools (--no-build-isolation), so nothing is taken from whatever the index holds today.
# A .venv made from another lock (or another version of it) is made again from scratch, so no
# package left from an earlier install can take part; serve is satisfied by a dev environment
# (dev.txt holds serve.txt's versions).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
lock="requirements/${1:?serve or dev}.txt"
stamp() { echo "$1 $(sha256sum "requirements/$1.txt" | cut -d' ' -f1)"; }
installed="$(cat .venv/locked 2>/dev/null || true)"
if [ "$installed" != "$(stamp "$1")" ] && [ "$installed" != "$(stamp dev)" ]; then
  rm -rf .venv
  python3 -m venv .venv
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
      --no-deps -r "$lock" >.venv/pip.log 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" .venv/pip.log >&2
    rm -rf .venv  # a half-made environment must not pass for a locked one next time
    exit 1
  fi
  stamp "$1" >.venv/locked
fi
# The project itself, against what is installed (no dependency is resolved here).
if ! .venv/bin/python -m pip install --quiet \
    --disable-pip-version-check --no-deps --no-build-isolation -e . >.venv/pip.log 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" .venv/pip.log >&2
  exit 1
fi
# A lock that misses a dependency of something in it fails here, not in a test.
if ! .venv/bin/python -m pip check --disable-pip-version-check >.venv/pip.log 2>&1; then
  cat .venv/pip.log >&2
  exit 1
fi
