#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project with its test extras.
# Re-installs only when pyproject.toml changed since the last successful install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EXPLAINER_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  echo "Installing into $venv (first run downloads PyTorch, a few GB)..." >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  # quantus asks for opencv-python, grad-cam for opencv-python-headless; both install the module
  # cv2, and the GUI build needs libGL. Put the headless build's files back last.
  "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps opencv-python-headless
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
