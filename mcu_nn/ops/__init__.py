"""Op units: one module per op family, each holding the op's IR dataclasses (float and integer),
its float step, its quantisation rule, its integer step and its C template (DESIGN.md, "Units of
growth"). The central stages handle the ops they have always known and ask :func:`unit_of` for the
rest. A module in this package registers its unit on import; all of them are imported on first use,
so adding a family is adding a file."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Optional

_UNITS: dict[type, Any] = {}
_loaded = False


def register(unit: Any) -> Any:
    """Make ``unit`` the handler of its ``float_types`` and ``quant_types``."""
    for t in (*unit.float_types, *unit.quant_types):
        _UNITS[t] = unit
    return unit


def unit_of(op: Any) -> Optional[Any]:
    """The unit that handles ``op`` (a float or integer IR op), or None."""
    global _loaded
    if not _loaded:
        _loaded = True
        for m in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{m.name}")
    return _UNITS.get(type(op))
