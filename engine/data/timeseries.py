"""Synthetic time-series datasets with ground-truth salient features (Dynamask/FIT generators, as
used by the StartGrad paper; spec time_series.md §1), and time-series input validation.

Both give x (N, T, 3), per-step labels y (N, T) and the truth A (N, T, 3) with exactly one
salient feature per time step. Generation is vectorised over series and uses one seeded
``np.random.Generator`` in one process (the original code's forked workers shared one RNG
state and produced duplicated series).
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

from engine.data.images import InputError

DEFAULT_MAX_LENGTH = 10_000
DEFAULT_MAX_FEATURES = 64
# A series of one step has no time axis: its mean over time (the black-box "mean" baseline) is
# the series itself, and the black-box scores' top 20 % of its T·D entries is empty (for up to
# four features), so they would score an unmasked series. Every series method, the white-box
# and black-box scores and the plot run on two steps (tests/test_timeseries.py).
MIN_SERIES_LENGTH = 2
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class SeriesDataset:
    x: torch.Tensor  # (N, T, D) float32
    y: torch.Tensor  # (N, T) float32, one label per time step
    truth: torch.Tensor  # (N, T, D) long, 1 where a feature is salient
    name: str
    seed: int

    def subset(self, index: np.ndarray) -> SeriesDataset:
        index = torch.as_tensor(index)
        return SeriesDataset(self.x[index], self.y[index], self.truth[index], self.name, self.seed)

    def folds(self, splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train, test) indices of ``KFold(splits, shuffle=True, random_state=seed)``."""
        folds = KFold(n_splits=splits, shuffle=True, random_state=self.seed)
        return list(folds.split(np.arange(len(self.x))))


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def _dataset(name, seed, x, states, salient_feature, label_scale, rng) -> SeriesDataset:
    n, length, features = x.shape
    important = salient_feature[states]  # (N, T)
    signal = np.take_along_axis(x, important[..., None], axis=2)[..., 0]
    y = (rng.random((n, length)) < _sigmoid(label_scale * signal)).astype(np.float32)
    truth = np.zeros((n, length, features), dtype=np.int64)
    np.put_along_axis(truth, important[..., None], 1, axis=2)
    return SeriesDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y),
                         torch.from_numpy(truth), name, seed)  # fmt: skip


def state_dataset(n: int = 1000, length: int = 200, seed: int = 0) -> SeriesDataset:
    """Two-state HMM: P(s_t = 1 | s_{t−1} = 1) = 0.95 − δ/500 (δ: steps since the last switch),
    P(s_t = 1 | s_{t−1} = 0) = 0.05; x_t ~ N(μ_s, Σ_s); y_t ~ Bernoulli(σ(2·x_{t,k_s})) with the
    salient feature k₀ = 1, k₁ = 2 (feature 0 is never salient)."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.1, 1.6, 0.5], [-0.1, -0.4, -1.5]])
    salient = np.array([1, 2])
    factors = []
    for k in salient:
        covariance = 0.801 * np.eye(3)
        covariance[k, 0] = covariance[0, k] = 0.01
        factors.append(np.linalg.cholesky(covariance))
    factors = np.stack(factors)
    previous = rng.random(n) < 0.5
    run = np.zeros(n)
    states = np.zeros((n, length), dtype=np.int64)
    for t in range(length):
        stay_one = 0.95 - run / 500
        state = np.where(previous, rng.random(n) < stay_one, rng.random(n) < 0.05)
        run = np.where(state == previous, run + 1, 0)
        states[:, t] = state
        previous = state
    noise = rng.standard_normal((n, length, 3))
    x = means[states] + np.einsum("ntij,ntj->nti", factors[states], noise)
    return _dataset("state", seed, x, states, salient, 2.0, rng)


def switch_feature_dataset(n: int = 1000, length: int = 200, seed: int = 0) -> SeriesDataset:
    """Three-state HMM; in state s each feature d is N(μ_{s,d}, 0.1) (the generator's Gaussian
    process has lengthscale 0.2 on integer times: its correlations are < 4e-7, so independent
    draws are the same process to that precision); y_t ~ Bernoulli(σ(3·x_{t,s_t})); feature s_t
    is salient. The first state is 0 or 1 only, as in the original generator."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.8, -0.5, -0.2], [0.0, -1.0, 0.0], [-0.2, -0.2, 0.8]])
    transitions = np.cumsum([[0.95, 0.02, 0.03], [0.02, 0.95, 0.03], [0.03, 0.02, 0.95]], 1)
    states = np.zeros((n, length), dtype=np.int64)
    states[:, 0] = rng.random(n) < 1 / 3
    for t in range(1, length):
        draw = rng.random(n)[:, None]
        states[:, t] = (draw > transitions[states[:, t - 1]]).sum(1).clip(max=2)
    x = means[states] + np.sqrt(0.1) * rng.standard_normal((n, length, 3))
    return _dataset("switch_feature", seed, x, states, np.arange(3), 3.0, rng)


DATASETS = {"state": state_dataset, "switch_feature": switch_feature_dataset}

# The bundled series model's data (scripts/train_bundled_series_model.py): its test fold's first
# ten series are the samples "state:0" … "state:9", with their ground truth.
BUNDLED_DATA = {"dataset": "state", "series": 1000, "length": 100, "seed": 0, "fold": 0}
SERIES_SAMPLES = tuple(f"state:{i}" for i in range(10))


@functools.cache
def _bundled_test_fold() -> SeriesDataset:
    d = BUNDLED_DATA
    data = DATASETS[d["dataset"]](d["series"], d["length"], d["seed"])
    return data.subset(data.folds()[d["fold"]][1])


def series_sample(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A bundled series sample: (series (T, D) float32, ground truth (T, D) 0/1)."""
    if name not in SERIES_SAMPLES:
        raise InputError(f"unknown series sample {name!r}; known: {', '.join(SERIES_SAMPLES)}")
    index = int(name.partition(":")[2])
    test = _bundled_test_fold()
    return test.x[index], test.truth[index]


@dataclass
class SeriesRecord:
    """Where a series came from and its shape (part of every result)."""

    source: str
    sha256: str
    shape: tuple[int, int]  # (T, D)

    @classmethod
    def of(cls, source, series: torch.Tensor) -> SeriesRecord:
        name = str(source) if isinstance(source, str | Path) else type(source).__name__
        digest = hashlib.sha256(series.numpy().tobytes()).hexdigest()
        return cls(name, digest, (series.shape[0], series.shape[1]))

    def to_dict(self) -> dict:
        return asdict(self)


def check_series_dtype(dtype: np.dtype) -> None:
    """Series values are real numbers: integers or floats. Complex values (whose imaginary part
    a cast would drop), booleans, strings, objects, dates and structured records are refused."""
    real = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    if dtype.names is not None or not real:
        kind = "complex numbers" if np.issubdtype(dtype, np.complexfloating) else str(dtype)
        raise InputError(f"series values must be real numbers (integer or float), got {kind}")


def check_series_shape(
    shape: tuple[int, ...], max_length: int = DEFAULT_MAX_LENGTH,
    max_features: int = DEFAULT_MAX_FEATURES,
) -> None:  # fmt: skip
    """A series is time × features (a 1-D array: one feature), at least
    :data:`MIN_SERIES_LENGTH` steps, within the limits."""
    if len(shape) == 1:
        shape = (shape[0], 1)
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"a series is time × features (2-D), got shape {tuple(shape)}")
    if shape[0] < MIN_SERIES_LENGTH:
        raise InputError(f"a series needs at least {MIN_SERIES_LENGTH} time steps (rows, time × "
                         f"features), got {shape[0]} step of {shape[1]} feature"
                         f"{'s' if shape[1] > 1 else ''}")  # fmt: skip
    if shape[0] > max_length or shape[1] > max_features:
        raise InputError(f"series is {shape[0]}×{shape[1]}; limits are {max_length} steps and "
                         f"{max_features} features")  # fmt: skip


def read_npy(
    data: bytes, *, max_length: int = DEFAULT_MAX_LENGTH, max_features: int = DEFAULT_MAX_FEATURES
) -> np.ndarray:
    """A series from ``.npy`` bytes, its header checked before anything is allocated: format
    1.0 or 2.0, a real-number dtype, a shape within the limits, and exactly the bytes that shape
    needs (a header claiming 10¹² rows is refused, never allocated). No pickles."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise InputError(f".npy format version {version[0]}.{version[1]} is not supported "
                             "(1.0 or 2.0 expected)")  # fmt: skip
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)  # fmt: skip
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, EOFError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"not a readable .npy file: {error}") from None
    check_series_dtype(dtype)
    check_series_shape(shape, max_length, max_features)
    needed = int(np.prod(shape)) * dtype.itemsize
    present = len(data) - stream.tell()
    if present != needed:
        raise InputError(f"the .npy header says {needed} bytes of data for shape {shape} and "
                         f"{dtype}, the file has {present}")  # fmt: skip
    array = np.frombuffer(data, dtype=dtype, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def load_series(
    source: str | Path | np.ndarray | torch.Tensor,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_features: int = DEFAULT_MAX_FEATURES,
) -> torch.Tensor:
    """A series as time × features from an array, a list, a ``.npy`` or a ``.csv`` file (comma
    separated, no header) or a bundled sample's name (``state:0`` … ``state:9``, where no such
    file exists) → float32 (T, D), validated: 2-D, real numbers, finite, within the limits, at
    least :data:`MIN_SERIES_LENGTH` steps (a ``.npy`` file's header is checked before its data
    is read: :func:`read_npy`)."""
    if isinstance(source, str) and source in SERIES_SAMPLES and not Path(source).is_file():
        return series_sample(source)[0]
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"series file {path} not found")
        if path.suffix == ".npy":
            array = read_npy(path.read_bytes(), max_length=max_length, max_features=max_features)
        elif path.suffix == ".csv":
            try:
                array = np.loadtxt(path, delimiter=",", ndmin=2)
            except ValueError as error:
                raise InputError(f"{path} is not a numeric CSV: {error}") from None
        else:
            raise InputError(f"series files are .npy or .csv, not {path.suffix or 'no suffix'}")
    else:
        array = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
    array = np.asarray(array)
    check_series_shape(array.shape, max_length, max_features)
    check_series_dtype(array.dtype)
    if array.ndim == 1:
        array = array[:, None]
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 becomes inf in float32
        values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise InputError("series values must be finite as float32 (no NaN or inf, magnitudes "
                         f"up to {FLOAT32_MAX:.3g})")  # fmt: skip
    return torch.from_numpy(values)
