"""The one envelope of every ``--json`` output (docs/json.md): a CI job reads ``schema`` and
``command`` first, then the command's own fields. ``schema`` changes only when a field is
removed or changes meaning; new fields may appear at any time."""
from __future__ import annotations

import json
import math
from typing import Any

from . import __version__

JSON_SCHEMA = 1


def _plain(v: Any) -> Any:
    """numpy scalars/arrays, Paths and non-finite floats as JSON has them (NaN/inf -> null)."""
    import numpy as np
    from pathlib import PurePath
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return _plain(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, PurePath):
        return str(v)
    return v


def envelope(command: str, payload: dict) -> dict:
    """``{"schema": 1, "command": ..., "mcu_nn_version": ..., **payload}`` with plain JSON values."""
    return {"schema": JSON_SCHEMA, "command": command, "mcu_nn_version": __version__, **_plain(payload)}


def dumps(command: str, payload: dict) -> str:
    """One line of JSON (ensure_ascii off: vocabularies and paths stay readable)."""
    return json.dumps(envelope(command, payload), ensure_ascii=False, allow_nan=False)
