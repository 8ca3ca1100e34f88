"""A zoo of real-world-style PyTorch recurrent models (issues 8 and 9), written the way public
tutorials and GitHub projects write them, quirks included, for surveying what mcu-nn can load.

``CASES`` is the registry (see ``ZooCase`` for the data layout of ``calib``/``heldout``);
``save(case, fmt, path)`` saves a case the way its project would. Families:
``d2l`` (d2l.ai language models), ``tutorials`` (PyTorch docs/tutorials and popular repos),
``sensors`` (time-series and keyword-spotting architectures), ``cells`` (hand-written recurrences).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import cells, d2l, sensors, tutorials
from ._case import FORMATS, ZooCase

CASES: list[ZooCase] = [*d2l.CASES, *tutorials.CASES, *sensors.CASES, *cells.CASES]
BY_NAME: dict[str, ZooCase] = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate case names"


def save(case: ZooCase, fmt: str, path: str | Path) -> Path:
    """Save ``case``'s model as "pt2" (torch.export.save), "torchscript" (torch.jit.trace or
    script, per ``case.jit``, then torch.jit.save) or "pickle" (torch.save of the whole module)."""
    path = Path(path)
    model, example = case.build(), case.example_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tracer warnings are part of the real-world experience
        if fmt == "pt2":
            torch.export.save(torch.export.export(model, example), str(path))
        elif fmt == "torchscript":
            ts = torch.jit.script(model) if case.jit == "script" else torch.jit.trace(model, example)
            torch.jit.save(ts, str(path))
        elif fmt == "pickle":
            torch.save(model, str(path))
        else:
            raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    return path


__all__ = ["CASES", "BY_NAME", "FORMATS", "ZooCase", "save"]
