#!/usr/bin/env bash
# Quick start 1: set up and run the server on embedded defaults
# (SQLite index + filesystem blobs under ./data, sample studies loaded at the first start).
# Any argument is passed to `pacs serve` (e.g. --dicom-port 11112 --http-port 8080).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" ""  # no extras; keeps "$@" for pacs serve
cd "$ROOT"
exec "$VENV/bin/pacs" serve "$@"
