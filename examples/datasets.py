"""Real data shipped inside PyPI packages (no download at run time): aeon's copies of the
UEA archive. Returns (N, T, F) float32 arrays and int64 labels.

``MCUNN_UEA_DIR=<dir>`` reads ``<dir>/<Name>.npz`` instead (the same arrays, saved by
tests/fixtures/make_uea_npz.py): the tests run the examples on those, without aeon."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load_uea(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x_train, y_train, x_test, y_test, class names) of a UEA set shipped with aeon.
    Variable-length sets are padded at the *front* to the longest sequence (with NaN, filled
    by :func:`standardise`), so ``out[:, -1]`` still sees the end of every sequence."""
    if os.environ.get("MCUNN_UEA_DIR"):
        path = Path(os.environ["MCUNN_UEA_DIR"]) / f"{name}.npz"
        if not path.is_file():
            raise SystemExit(f"MCUNN_UEA_DIR has no {path.name} ({path}): unset it to load {name} from aeon")
        with np.load(path) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"], [str(c) for c in z["classes"]]
    try:
        from aeon.datasets import load_classification
    except ImportError:
        raise SystemExit("this example needs the data-set package: pip install 'mcu-nn[examples]'") from None
    parts = [load_classification(name, split=s) for s in ("train", "test")]
    classes = sorted({str(v) for _, y in parts for v in y})
    out = []
    longest = max(max(np.asarray(s).shape[-1] for s in x) for x, _ in parts)
    for x, y in parts:
        seqs = [np.asarray(s, np.float32).T for s in x]                 # (T_i, F)
        arr = np.full((len(seqs), longest, seqs[0].shape[1]), np.nan, np.float32)
        for i, s in enumerate(seqs):
            arr[i, longest - len(s):] = s
        out += [arr, np.array([classes.index(str(v)) for v in y], np.int64)]
    return out[0], out[1], out[2], out[3], classes


def standardise(x_train: np.ndarray, *xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-channel mean/std of the training set; padding (NaN) becomes 0 (= the mean)."""
    mean = np.nanmean(x_train, axis=(0, 1)).astype(np.float32)
    std = (np.nanstd(x_train, axis=(0, 1)) + 1e-6).astype(np.float32)
    return mean, std, [np.nan_to_num((a - mean) / std).astype(np.float32) for a in (x_train, *xs)]


def fold_standardisation(rnn, mean: np.ndarray, std: np.ndarray) -> None:
    """Fold (x - mean) / std into the first recurrent layer, so the chip takes raw sensor
    values: W (x - m)/s + b = (W/s) x + (b - (W/s) m)."""
    import torch
    with torch.no_grad():
        w = rnn.weight_ih_l0 / torch.from_numpy(std)
        rnn.weight_ih_l0.copy_(w)
        rnn.bias_ih_l0.sub_(w @ torch.from_numpy(mean))
