"""``z.unsqueeze(1).repeat(1, T, 1)`` / ``.expand(-1, T, -1)``: a per-sequence vector repeated
over the T steps of the run (LSTM autoencoders, seq2seq decoders). The vector exists only
once the whole input has been read, so a model with it runs whole sequences (no ``_step``).
Reads [vector, model input]: the input only for its number of steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Repeat:
    source: str = ""
    inputs: list[str] = field(default_factory=list)    # [vector, "input"]
    outputs: list[str] = field(default_factory=list)
    bidirectional = True                  # whole sequence only (manifest: no _step)

    def out_len(self, n: int) -> int:
        return n

    def same_rate(self) -> bool:
        return True

    def outs(self, xs: list) -> list[tuple[int, bool, float]]:
        return [(xs[0].size, True, xs[0].scale)]

    def run_float(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        v, t = xs[0], xs[1].shape[1]
        return [np.repeat(v[:, None, :], t, axis=1)]

    run_int = run_float

    def quantize(self, in_scales: list[float], stats: dict, key: str, precision: str, where: str) -> "Repeat":
        return self
