#!/usr/bin/env bash
# Set up what is missing, then run the whole system: local database (nx-27017,
# unless MONGODB_URI is set), the API under gunicorn and the Streamlit UI.
# Stop everything with Ctrl-C. Configuration: see README.md.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
ensure_venv requirements.txt
exec .venv/bin/python -m tools.launcher "$@"
