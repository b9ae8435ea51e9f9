"""Train the bundled time-series model: a GRU on the state dataset (engine.data.timeseries
BUNDLED_DATA), saved as engine/models/weights/state_gru.pt with its record (seed, settings,
test accuracy) in state_gru.json beside it. Deterministic on the CPU:

    .venv/bin/python scripts/train_bundled_series_model.py
"""

from __future__ import annotations

import sys

from engine.cli import main
from engine.data.timeseries import BUNDLED_DATA
from engine.models.series import BUNDLED

SETTINGS = {"--cell": "gru", "--hidden": "64", "--epochs": "40", "--learning-rate": "0.003"}

if __name__ == "__main__":
    BUNDLED.parent.mkdir(parents=True, exist_ok=True)
    data = {"--dataset": BUNDLED_DATA["dataset"], "--series": BUNDLED_DATA["series"],
            "--length": BUNDLED_DATA["length"], "--seed": BUNDLED_DATA["seed"],
            "--fold": BUNDLED_DATA["fold"]}  # fmt: skip
    argv = ["train-series", "--out", str(BUNDLED)]
    for flag, value in (data | SETTINGS).items():
        argv += [flag, str(value)]
    sys.exit(main(argv))
