"""Ops around the recurrent cells, one module per op family (DESIGN.md, "Units of growth").

Two forms live here today (to be made one, with the cells, in issue 9's unit refactor):

- ops over time (conv1d, pooling, attention, repeat) are IR dataclasses that carry their own
  methods: ``outs`` (sizes, per-step-ness and scales, for ``ir.tensors``), ``run_float`` /
  ``run_int`` (the simulators, over whole sequences), ``quantize`` and ``template``;
- step-wise op units (activations, element-wise, concat, layernorm) register a unit object
  holding the IR dataclasses (float and integer), float step, quantisation rule, integer step
  and C template; the stages ask :func:`unit_of`. A module in this package registers its unit
  on import; all are imported on first use, so adding a family is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any, Optional

_UNITS: dict[type, Any] = {}
_loaded = False
_load_lock = threading.RLock()


def register(unit: Any) -> Any:
    """Make ``unit`` the handler of its ``float_types`` and ``quant_types``."""
    for t in (*unit.float_types, *unit.quant_types):
        _UNITS[t] = unit
    return unit


def unit_of(op: Any) -> Optional[Any]:
    """The unit that handles ``op`` (a float or integer IR op), or None."""
    global _loaded
    if not _loaded:
        with _load_lock:        # threads exporting at once must not see a half-filled table
            if not _loaded:
                for m in pkgutil.iter_modules(__path__):
                    importlib.import_module(f"{__name__}.{m.name}")
                _loaded = True
    return _UNITS.get(type(op))
