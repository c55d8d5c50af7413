#!/usr/bin/env bash
# Set up what is missing, then run every test: unit, integration against a real
# local database server, Streamlit AppTest and the browser test.
# Extra arguments go to pytest (e.g. ./test.sh -k api).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
ensure_venv requirements.txt requirements-dev.txt
ensure_chromium
exec .venv/bin/python -m pytest "$@"
