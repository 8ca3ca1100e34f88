"""write_export: the export directory (C sources, runtime header, manifest, test vectors)."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..errors import McuNnError, McuNnWarning
from ..exportdir import (MANIFEST, SCHEMA_VERSION, VECTORS, file_sha256, is_source, manifest_bytes,
                         source_digest)
from ..ir import QModel, whole_sequence
from .emit import RUNTIME_HEADER, RUNTIME_SOURCE, RUNTIME_VERSION, emit, render_runtime


def chip_input(q: QModel, x: np.ndarray) -> np.ndarray:
    """The <name>_in_t values the chip receives for model inputs ``x``."""
    from ..sim.int_sim import quantize_model_input
    if q.precision == "float32":
        return np.asarray(x, np.float32) if q.input_kind == "float" else np.asarray(x, np.int64)
    return quantize_model_input(q, x)


def write_export(q: QModel, out_dir: Path, test_input: np.ndarray, expected: np.ndarray,
                 extra: Optional[dict] = None, weight_layout: str = "packed",
                 lengths: Optional[np.ndarray] = None, extra_files: Optional[dict[str, bytes]] = None) -> dict:
    """Write <name>.h, <name>.c, the runtime (mcunn_fixedpoint.h/.c), model.json,
    test_vectors.npz and qmodel.npz (the quantised model, for the simulator of later stages)
    into ``out_dir``; returns the
    manifest. ``extra_files`` (e.g. a language model's vocab.json) are written and hashed too. ``expected`` are the simulator's outputs on ``test_input``.
    ``weight_layout`` ("packed" or "wide", see codegen.emit) trades flash for speed on int8.
    ``lengths``: steps of each test vector when they differ (``test_input`` is zero-padded
    after them and ``expected`` holds zeros there for per-step outputs; see run_padded).

    The files are written into a temporary directory beside ``out_dir`` and renamed into place
    only when all are complete, so an interrupted export leaves no directory a later stage
    accepts. ``out_dir`` may be missing, empty, or an earlier export of the same model name
    (replaced whole); anything else is refused rather than overwritten."""
    out_dir = Path(out_dir)
    check_target(out_dir, q.name.lower())
    e = emit(q, weight_layout=weight_layout)
    header, source = f"{q.name.lower()}.h", f"{q.name.lower()}.c"     # named by the prefix: models side by side
    sources = {header: e.header, source: e.source, **render_runtime()}
    vectors = _test_vectors(q, test_input, expected, lengths)
    blobs = {name: text.encode() for name, text in sources.items()}
    blobs[VECTORS] = vectors
    blobs.update(_qmodel_file(q))
    for fname, data in (extra_files or {}).items():
        if fname in blobs or fname == MANIFEST or is_source(fname) or fname != Path(fname).name:
            raise McuNnError(f"write_export: extra file {fname!r} would clash with the export's own files")
        blobs[fname] = data
    flash = sum(a.nbytes for a in e.arrays)
    streams = not whole_sequence(q)          # False: bidirectional layers or ops that read ahead
    tokens = q.input_kind == "tokens"
    fp32 = q.precision == "float32"
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": q.name.lower(), "precision": q.precision, "input_kind": q.input_kind,
        "input_size": q.input_size, "input_values_per_step": 1 if tokens else q.input_size,
        "output_size": q.output_size, "output_per_step": q.output_per_step,
        "max_steps": 0 if streams else q.max_steps, "seq_len": q.seq_len, "has_step": streams,
        "input_scale": q.input_scale, "output_scale": q.output_scale,
        "in_ctype": "float" if fp32 else ("int32_t" if tokens else "int16_t"),
        "out_ctype": "float" if fp32 else "int16_t", "postprocess": q.postprocess,
        "layers": e.layers, "flash_bytes": flash, "ram_bytes": e.state_bytes, "weight_layout": weight_layout,
        "macs_per_step": sum(layer["macs_per_step"] for layer in e.layers),
        "header": header, "c_sources": [source],
        "runtime": {"header": RUNTIME_HEADER, "sources": [RUNTIME_SOURCE], "version": RUNTIME_VERSION},
        "files": {name: file_sha256(data) for name, data in sorted(blobs.items())},
        "sha256": source_digest({n: b for n, b in blobs.items() if is_source(n)}),
        "mcu_nn_version": __version__,
        "test_vectors": int(np.asarray(test_input).shape[0]),
    }
    for layer, arrs in zip(manifest["layers"], _arrays_by_op(e)):
        layer["flash_bytes"] = arrs
    extra = dict(extra or {})
    manifest["saturation"] = {**extra.pop("saturation", {}), "test_vectors": saturation_counts(q, test_input, lengths)}
    manifest.update(extra)
    blobs[MANIFEST] = manifest_bytes(manifest)
    _write_atomically(out_dir, blobs)
    return manifest


def _qmodel_file(q: QModel) -> dict[str, bytes]:
    """{qmodel.npz: bytes}, or nothing (with a warning) for a model holding a value the file
    format cannot keep: the export stays usable, only `mcu-nn generate` needs the file."""
    from ..qmodel_file import FILE, qmodel_bytes
    try:
        return {FILE: qmodel_bytes(q)}
    except TypeError as e:
        warnings.warn(f"{FILE} not written ({e}): mcu-nn generate will not run this export",
                      McuNnWarning, stacklevel=3)
        return {}


def saturation_counts(q: QModel, x: np.ndarray, lengths: Optional[np.ndarray] = None) -> dict:
    """Where the simulator clips on ``x`` (each sequence run for its length only); summed over
    the groups of equally long sequences. Verify and serial-test report it."""
    from ..quant.calibrate import CalibrationSet
    from ..sim.int_sim import saturation
    x = np.asarray(x)
    total: dict = {}
    for idx, n in CalibrationSet(x, lengths).sequences_by_length():
        for site, e in saturation(q, x[idx, :n]).items():
            t = total.setdefault(site, {"clipped": 0, "values": 0, "source": e["source"]})
            t["clipped"] += e["clipped"]
            t["values"] += e["values"]
    return total


def run_padded(fn, x: np.ndarray, lengths: Optional[np.ndarray], per_step: bool) -> np.ndarray:
    """``fn`` (a simulator run over (N, T, ...) inputs) on sequences of different lengths:
    each group of equal length runs alone (the padding never runs, as on the chip); per-step
    outputs are zero after each sequence's length."""
    if lengths is None or np.all(np.asarray(lengths) == x.shape[1]):
        return fn(x)
    from ..quant.calibrate import CalibrationSet
    out = None
    for idx, n in CalibrationSet(x, np.asarray(lengths, np.int64)).sequences_by_length():
        y = np.asarray(fn(x[idx, :n]))
        if out is None:
            shape = (x.shape[0], x.shape[1], *y.shape[2:]) if per_step else (x.shape[0], *y.shape[1:])
            out = np.zeros(shape, y.dtype)
        if per_step:
            out[idx, :n] = y
        else:
            out[idx] = y
    return out


def check_target(out_dir: Path, name: str) -> None:
    """Refuse, in one line and before any work, an ``-o`` the export could not be written to: a
    file, a path under a file, a directory that holds something else (see _check_target), or a
    place where no directory can be created (read-only, no permission)."""
    out_dir = Path(out_dir)
    _check_target(out_dir, name)
    where = out_dir.absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise McuNnError(f"-o {out_dir}: {where} is a file, not a directory; pass a directory for the export")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out_dir.name or 'export'}.probe-", dir=where))
    except OSError as e:
        raise McuNnError(f"-o {out_dir}: cannot create a directory in {where} ({e.strerror or e}); "
                         "choose a writable place for the export") from None


def _check_target(out_dir: Path, name: str) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise McuNnError(f"-o {out_dir} is a file; pass a directory for the export")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    try:
        previous = json.loads((out_dir / MANIFEST).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != name:
        what = f"an export of {previous!r}" if isinstance(previous, str) else "not an mcu-nn export"
        raise McuNnError(f"-o {out_dir} is not empty and is {what}, not of {name!r}; choose another "
                         "directory or remove it (mcu-nn only replaces an earlier export of the same name)")


def _write_atomically(out_dir: Path, blobs: dict[str, bytes]) -> None:
    """All files into a fresh sibling directory, then one rename into place (the previous
    export of the same name, if any, is moved aside first and removed after)."""
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    except OSError as e:
        raise McuNnError(f"cannot create export directory {out_dir}: {e.strerror}") from None
    old: Optional[Path] = None
    try:
        for name, data in blobs.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)                       # mkdtemp makes it private; an export is not
        if out_dir.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, old / "export")
        os.rename(tmp, out_dir)
    except OSError as e:
        raise McuNnError(f"cannot write export directory {out_dir}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not out_dir.exists():               # the rename in failed: put the old export back
                os.rename(old / "export", out_dir)
            shutil.rmtree(old, ignore_errors=True)


def _test_vectors(q: QModel, test_input: np.ndarray, expected: np.ndarray,
                  lengths: Optional[np.ndarray] = None) -> bytes:
    """test_vectors.npz: float inputs, the chip's inputs and the simulator's expected outputs."""
    x = np.asarray(test_input)
    fp32 = q.precision == "float32"
    tokens = q.input_kind == "tokens"
    if x.ndim < 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise McuNnError(f"write_export: test inputs have shape {x.shape}; need at least one vector of one step")
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
    arrays = {"input": input_arr, "input_q": in_q, "expected": exp}
    if lengths is not None and np.any(np.asarray(lengths) != x.shape[1]):
        lengths = np.asarray(lengths, np.int64)
        if lengths.shape != (x.shape[0],) or lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise McuNnError(f"write_export: lengths must be {x.shape[0]} values in 1..{x.shape[1]}")
        arrays["lengths"] = lengths.astype(np.int32)
    if fp32:
        arrays["float_drift"] = _float_drift(q, input_arr, exp, lengths)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _float_drift(q: QModel, x: np.ndarray, expected: np.ndarray,
                 lengths: Optional[np.ndarray] = None) -> np.ndarray:
    """Per vector, the largest distance of the float32 simulation from the same computation
    in float64: the scale of summation-order differences (see mcu_nn.compare)."""
    from ..sim.float_sim import run_float64
    from ..sim.int_sim import as_graph
    ref = run_padded(lambda xs: run_float64(as_graph(q), xs), x, lengths, q.output_per_step)
    err = np.abs(expected.astype(np.float64) - ref).reshape(len(x), -1)
    return np.nan_to_num(err.max(axis=1), nan=0.0, posinf=0.0).astype(np.float32)


def _arrays_by_op(e) -> list[int]:
    sizes: dict[int, int] = {}
    for a in e.arrays:
        sizes[a.op] = sizes.get(a.op, 0) + a.nbytes
    return [sizes.get(layer["index"], 0) for layer in e.layers]
