"""Recurrent cell kinds, one unit each (DESIGN.md, "Units of growth").

A module of this package defines a :class:`~mcu_nn.cells.base.Cell` subclass and calls
:func:`register` on an instance: where the cell comes from in an exported graph, its parameter
layout and gates, its states, its float and integer steps, its quantisation hook, its QAT
surrogate and its C template (``templates/cells/<kind>.c.j2``). The stages (frontend, simulators,
quantiser, QAT, codegen, report) loop over ops and ask :func:`cell_of`. Every module here is
imported on first use, so adding a cell is adding a module and a template.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Optional

from ..errors import McuNnError
from .base import Cell, register, registry

__all__ = ["Cell", "register", "cells", "cell_of", "from_aten", "from_torch_module", "GATES"]
_loaded = False
_load_lock = threading.RLock()


def cells() -> dict[str, Cell]:
    """Every registered cell by kind (``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ...)."""
    global _loaded
    if not _loaded:
        with _load_lock:        # threads exporting at once must not see a half-filled registry
            if not _loaded:
                for m in pkgutil.iter_modules(__path__):
                    if m.name != "base":
                        importlib.import_module(f"{__name__}.{m.name}")
                _loaded = True
    return registry()


def cell_of(kind: str) -> Cell:
    """The cell of ``kind``; one clear error for a kind no module defines."""
    found = cells().get(kind)
    if found is None:
        raise McuNnError(f"unknown recurrent cell kind {kind!r}; known: {', '.join(sorted(cells()))}")
    return found


def from_aten(op_name: str) -> Optional[Cell]:
    """The cell an exported-graph op ("aten.lstm.input", ...) is, or None."""
    return next((c for c in cells().values() if op_name in c.aten), None)


def from_torch_module(class_name: str) -> Optional[Cell]:
    """A cell of an nn.Module class ("LSTM", "GRU", "RNN": the gate count is what loading needs), or None."""
    return next((c for c in cells().values() if class_name and c.torch_module == class_name), None)


class _Gates(dict):
    """kind -> number of gate rows per unit (PyTorch's layout), filled on first use."""

    def __missing__(self, kind: str) -> int:
        return cell_of(kind).n_gates


GATES = _Gates()
