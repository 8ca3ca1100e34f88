"""The ZooCase record and the small helpers every family module uses to declare its cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

FORMATS = ("pt2", "torchscript", "pickle")
Data = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooCase:
    """One real-world-style model.

    ``calib(n, seed)`` / ``heldout(n, seed)`` return what a user would put in an .npz:
    key ``"x"`` is always the main sequence input in mcu-nn's canonical layout, (N, T, F) float32
    or (N, T) int64 token ids, whatever layout the model itself takes (time-major, unbatched,
    no feature axis, ...). Other model inputs are keyed by their forward() argument name with a
    leading N axis (``"lengths"``: (N,) int64; a state tensor that PyTorch wants as (L*D, B, H)
    is stored as (N, L*D, H); a (h, c) tuple argument ``state`` as ``"state.h"``, ``"state.c"``).
    ``input_names`` lists the model-input keys in forward() order; any other key (``"y"``) is a
    target, not an input.
    """
    name: str
    issue: int                                   # 8: real-world module styles, 9: hand-written cells
    build: Callable[[], nn.Module]               # seeded, eval mode
    example_inputs: Callable[[], tuple]          # exactly what forward() takes (nested tuples for state)
    calib: Callable[[int, int], Data]
    heldout: Callable[[int, int], Data]
    formats: tuple[str, ...]                     # the ones PyTorch 2.13 can actually save
    notes: str                                   # where the style comes from
    jit: str = "trace"                           # how that project makes TorchScript: "trace" | "script"
    input_names: tuple[str, ...] = ("x",)

    def input_shape(self) -> tuple[int, ...]:
        """(T, F) or (T,) of one sample of the main input, as mcu-nn's --input-shape wants it."""
        return tuple(self.calib(1, 0)["x"].shape[1:])


def seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(seed)
    return make().eval()


def sensor(n: int, T: int, F: int, seed: int, *, scale: float = 1.0) -> np.ndarray:
    """Smooth multi-channel signals (sines of random frequency/phase plus noise), (n, T, F) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(T, dtype=np.float32)[None, :, None]
    f = rng.uniform(0.5, 4.0, (n, 1, F)) / T
    ph = rng.uniform(0, 2 * np.pi, (n, 1, F))
    x = np.sin(2 * np.pi * f * t + ph) * rng.uniform(0.5, 1.5, (n, 1, F)) + 0.1 * rng.standard_normal((n, T, F))
    return (scale * x).astype(np.float32)


def token_ids(n: int, T: int, vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (n, T)).astype(np.int64)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def simple_case(name: str, issue: int, make: Callable[[], nn.Module], *, T: int, F: int,
                formats: tuple[str, ...], notes: str, layout: str = "NTF", tokens: int = 0,
                extra: Optional[Callable[[nn.Module, int], tuple]] = None,
                extra_data: Optional[Callable[[int], Data]] = None, input_names: tuple[str, ...] = ("x",),
                jit: str = "trace", seed: int = 0, dtype: torch.dtype = torch.float32) -> ZooCase:
    """A case whose main input is a float sequence (or token ids when ``tokens`` is the vocabulary).
    ``layout`` is how forward() wants it: "NTF" batch first, "TNF" time-major, "TF" unbatched,
    "NT" batch first without a feature axis, "T" one unbatched sentence. ``extra(model, batch)``
    gives the remaining forward() arguments; ``extra_data(n)`` their calibration arrays."""
    def data(n: int, s: int) -> Data:
        x = token_ids(n, T, tokens, s) if tokens else sensor(n, T, F, s)
        return {"x": x, **(extra_data(n) if extra_data else {})}

    def example() -> tuple:
        batch = 1 if layout in ("TF", "T") else 2
        x = t(data(batch, 0)["x"]).to(dtype if not tokens else torch.int64)
        x = {"NTF": x, "TNF": x.transpose(0, 1).contiguous(), "TF": x[0], "T": x[0],
             "NT": x[..., 0]}[layout]
        rest = extra(build(), batch) if extra else ()
        return (x, *rest)

    def build() -> nn.Module:
        m = seeded(seed, make)
        return m.to(dtype) if dtype != torch.float32 else m

    return ZooCase(name, issue, build, example, data, lambda n, s: data(n, 1000 + s), formats, notes,
                   jit, input_names)


def call(model: nn.Module, inputs: tuple) -> Any:
    with torch.no_grad():
        return model(*inputs)
