"""write_export: the export directory (C sources, runtime header, manifest, test vectors)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..errors import McuNnError
from ..ir import QModel
from .emit import emit, render_runtime_header

RUNTIME_HEADER = "mcunn_fixedpoint.h"


def chip_input(q: QModel, x: np.ndarray) -> np.ndarray:
    """The <name>_in_t values the chip receives for model inputs ``x``."""
    from ..sim.int_sim import quantize_model_input
    if q.precision == "float32":
        return np.asarray(x, np.float32) if q.input_kind == "float" else np.asarray(x, np.int64)
    return quantize_model_input(q, x)


def write_export(q: QModel, out_dir: Path, test_input: np.ndarray, expected: np.ndarray,
                 extra: Optional[dict] = None, weight_layout: str = "packed") -> dict:
    """Write model.h, model.c, mcunn_fixedpoint.h, model.json and test_vectors.npz into
    ``out_dir``; returns the manifest. ``expected`` are the simulator's outputs on ``test_input``.
    ``weight_layout`` ("packed" or "wide", see codegen.emit) trades flash for speed on int8."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise McuNnError(f"cannot create export directory {out_dir}: {e.strerror}") from None
    e = emit(q, weight_layout=weight_layout)
    files = {"model.h": e.header, "model.c": e.source, RUNTIME_HEADER: render_runtime_header()}
    for name, text in files.items():
        (out_dir / name).write_text(text)

    x = np.asarray(test_input)
    fp32 = q.precision == "float32"
    tokens = q.input_kind == "tokens"
    input_arr = x.astype(np.int64) if tokens else x.astype(np.float32)
    exp = np.asarray(expected)
    if not fp32:
        if exp.size and (exp.min() < -32768 or exp.max() > 32767):
            raise McuNnError("write_export: expected outputs are outside int16; pass run_quant's output")
        exp = exp.astype(np.int16)
    else:
        exp = exp.astype(np.float32)
    want = (x.shape[0], x.shape[1], q.output_size) if q.output_per_step else (x.shape[0], q.output_size)
    if exp.shape != want:
        raise McuNnError(f"write_export: expected outputs have shape {exp.shape}, the model gives {want}")
    in_q = chip_input(q, input_arr)
    in_q = in_q.astype(np.float32 if fp32 else (np.int32 if tokens else np.int16))
    np.savez(out_dir / "test_vectors.npz", input=input_arr, input_q=in_q, expected=exp)

    sha = hashlib.sha256()
    for name in sorted(files):
        sha.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    flash = sum(a.nbytes for a in e.arrays)
    bidir = any(getattr(o, "bidirectional", False) for o in q.ops)
    manifest = {
        "name": q.name.lower(), "precision": q.precision, "input_kind": q.input_kind,
        "input_size": q.input_size, "input_values_per_step": 1 if tokens else q.input_size,
        "output_size": q.output_size, "output_per_step": q.output_per_step,
        "max_steps": q.max_steps if bidir else 0, "seq_len": q.seq_len, "bidirectional": bidir,
        "input_scale": q.input_scale, "output_scale": q.output_scale,
        "in_ctype": "float" if fp32 else ("int32_t" if tokens else "int16_t"),
        "out_ctype": "float" if fp32 else "int16_t", "postprocess": q.postprocess,
        "layers": e.layers, "flash_bytes": flash, "ram_bytes": e.state_bytes, "weight_layout": weight_layout,
        "macs_per_step": sum(layer["macs_per_step"] for layer in e.layers),
        "files": sorted(files) + ["model.json", "test_vectors.npz"],
        "sha256": sha.hexdigest(), "mcu_nn_version": __version__,
        "test_vectors": int(x.shape[0]),
    }
    for layer, arrs in zip(manifest["layers"], _arrays_by_op(e)):
        layer["flash_bytes"] = arrs
    manifest.update(extra or {})
    (out_dir / "model.json").write_text(json.dumps(manifest, indent=2, default=_jsonable) + "\n")
    return manifest


def _arrays_by_op(e) -> list[int]:
    sizes: dict[int, int] = {}
    for a in e.arrays:
        k = int(a.name.split("_op", 1)[1].split("_")[0])
        sizes[k] = sizes.get(k, 0) + a.nbytes
    return [sizes.get(layer["index"], 0) for layer in e.layers]


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
