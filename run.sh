#!/usr/bin/env bash
# Quick start: install everything (first run only) and explain the bundled photograph `chelsea`
# with the bundled EfficientNet-Lite0. Extra arguments go to `python -m engine explain`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
venv="${EXPLAINER_VENV:-$root/.venv}"
exec "$venv/bin/python" -m engine explain chelsea --model efficientnet_lite0 \
  --method integrated_gradients --out "$root/explanations/chelsea" "$@"
