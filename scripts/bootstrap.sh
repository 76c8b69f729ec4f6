#!/usr/bin/env bash
# Shared setup for the two quick-start commands: a virtualenv with the project installed.
# Usage: source scripts/bootstrap.sh [EXTRAS]   (EXTRAS e.g. "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PACS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Python 3.11 or newer is needed (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian splits venv/ensurepip into python3-venv.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> apt-get install python3-venv"
    apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null
  else
    echo "python3-venv is missing: run 'sudo apt-get install -y python3-venv'" >&2
    exit 1
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
SPEC="$ROOT"
if [ -n "${1:-}" ]; then SPEC="$ROOT[$1]"; fi
echo "==> installing $SPEC into $VENV"
# With pipefail pip's own exit status counts, not grep's: a failed install must stop here.
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$SPEC" 2>&1 \
  | { grep -v -E "^WARNING: Location .* is ignored" || true; }; then
  echo "pip install of $SPEC failed (see above)" >&2
  exit 1
fi
"$VENV/bin/python" -c "import pacs" # fail here, not later, if the install did not work
export PATH="$VENV/bin:$PATH"
