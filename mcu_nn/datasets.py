"""Small data sets made by code, for the demo, the README example and the tests
(no download at run time)."""
from __future__ import annotations

import numpy as np


def synthetic_imu(n: int, *, steps: int = 32, features: int = 3, classes: int = 4,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A toy activity-recognition set: each class is a motion with its own frequency and
    axis mix, with random phase, amplitude and sensor noise. Returns (x (N,T,F) float32,
    labels (N,) int64)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    t = np.arange(steps, dtype=np.float64)[None, :, None]
    freq = (0.05 + 0.06 * labels)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    axes = np.stack([np.roll(np.linspace(1.0, 0.2, features), c) for c in range(classes)])
    amp = rng.uniform(0.7, 1.3, size=(n, 1, 1)) * axes[labels][:, None, :]
    x = amp * np.sin(2 * np.pi * freq * t + phase) + 0.1 * rng.standard_normal((n, steps, features))
    return x.astype(np.float32), labels.astype(np.int64)
