"""The models saved beside the C, so later stages can run the simulators on inputs chosen after
export without the model file: the quantised model (``qmodel.npz``: the bit-exact simulator, for
``mcu-nn generate`` and ``serial-test --inputs``) and the float model (``float_model.npz``: the
float reference ``serial-test --inputs`` measures the board's SNR and top-1 agreement against).

No pickle: the IR's dataclasses are written as JSON (each object named by module and class)
plus numpy arrays, and read back only into dataclasses of the mcu_nn package."""
from __future__ import annotations

import dataclasses
import importlib
import io
import json
from typing import Any

import numpy as np

from .errors import McuNnError
from .ir import Graph, QModel

FILE = "qmodel.npz"
FLOAT_FILE = "float_model.npz"
FORMAT = 1


class _Writer:
    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def enc(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return {"int": str(v)} if abs(v) >= 1 << 53 else v
        if isinstance(v, float):
            return {"float": repr(v)}                      # exact, and NaN/inf survive
        if isinstance(v, (np.ndarray, np.generic)):
            if v.dtype.kind not in "biuf":
                raise TypeError(f"array of dtype {v.dtype}")
            self.arrays.append(np.asarray(v))
            return {"array": len(self.arrays) - 1, "scalar": isinstance(v, np.generic)}
        if isinstance(v, (list, tuple)):
            return {"tuple" if isinstance(v, tuple) else "list": [self.enc(x) for x in v]}
        if isinstance(v, dict):
            return {"dict": [[self.enc(k), self.enc(x)] for k, x in v.items()]}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            if not cls.__module__.startswith("mcu_nn."):
                raise TypeError(f"dataclass {cls.__qualname__} is not mcu-nn's")
            return {"class": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {k: self.enc(x) for k, x in vars(v).items()}}
        raise TypeError(f"value of type {type(v).__name__}")


def _dec(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(v, dict):
        return v
    if "int" in v:
        return int(v["int"])
    if "float" in v:
        return float(v["float"])
    if "array" in v:
        a = arrays[f"a{int(v['array'])}"]
        return a[()] if v["scalar"] else a
    if "list" in v:
        return [_dec(x, arrays) for x in v["list"]]
    if "tuple" in v:
        return tuple(_dec(x, arrays) for x in v["tuple"])
    if "dict" in v:
        return {_dec(k, arrays): _dec(x, arrays) for k, x in v["dict"]}
    module, _, name = v["class"].partition(":")
    if not module.startswith("mcu_nn."):
        raise ValueError(f"class {v['class']} is not mcu-nn's")
    cls: Any = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"{v['class']} is not a dataclass")
    obj = cls.__new__(cls)                 # fields as saved: no __init__ / __post_init__ re-run
    obj.__dict__.update({k: _dec(x, arrays) for k, x in v["fields"].items()})
    return obj


def model_bytes(model: Any) -> bytes:
    """A ``QModel`` or a float ``Graph`` as the bytes of an .npz (JSON of the dataclasses plus
    their arrays); TypeError when it holds a value this format cannot keep."""
    w = _Writer()
    doc = json.dumps({"format": FORMAT, "model": w.enc(model)})
    buf = io.BytesIO()
    np.savez(buf, model=np.frombuffer(doc.encode(), np.uint8), **{f"a{i}": a for i, a in enumerate(w.arrays)})
    return buf.getvalue()


def _load(data: bytes, where: str, cls: type, what: str) -> Any:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(arrays.pop("model").tobytes().decode())
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, this mcu-nn reads {FORMAT}")
        obj = _dec(doc["model"], arrays)
    except Exception as e:      # a damaged file or another version's classes: one line
        raise McuNnError(f"{where} is unreadable ({type(e).__name__}: {str(e)[:100]}); re-run mcu-nn export") from None
    if not isinstance(obj, cls):
        raise McuNnError(f"{where} does not hold {what}; re-run mcu-nn export")
    return obj


def qmodel_bytes(q: QModel) -> bytes:
    """``q`` as the bytes of qmodel.npz; TypeError when it holds a value this format cannot keep."""
    return model_bytes(q)


def load_qmodel(data: bytes, where: str) -> QModel:
    """The QModel saved in qmodel.npz (its bytes, already hash-checked by open_export)."""
    return _load(data, where, QModel, "a quantised model")


def graph_bytes(graph: Graph) -> bytes:
    """The float ``graph`` as the bytes of float_model.npz; TypeError as for qmodel_bytes."""
    return model_bytes(graph)


def load_graph(data: bytes, where: str) -> Graph:
    """The float Graph saved in float_model.npz (its bytes, already hash-checked by open_export)."""
    return _load(data, where, Graph, "a float model")
