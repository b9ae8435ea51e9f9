#!/usr/bin/env bash
# Quick start: install everything (first run only) and serve the API on http://127.0.0.1:8000
# in embedded mode (in-process worker, bundled EfficientNet-Lite0). Extra arguments go to
# `python -m service` (e.g. --port 8001).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
venv="${EXPLAINER_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m service "$@"
