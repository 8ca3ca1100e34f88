"""Reading an export directory back (the contract `mcu-nn export` writes).

Every later stage — verify, build, bench, serial-test — opens an export through
:func:`open_export`, which

- validates ``model.json`` field by field (a corrupt or hand-edited manifest gets one line
  naming the file and the field, never a KeyError deep inside a stage);
- recomputes the sha256 of every file the manifest lists and refuses an export whose files
  differ from it, unless the caller allows modification on purpose;
- checks the fields that shape firmware (sizes, streaming, types) against the header itself;
- checks the test vectors' keys, dtypes and shapes against the manifest.

The stages then compile the bytes that were checked (:func:`stage_sources`), not the files
again, so the hash a firmware reports is the hash of what it was built from.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .errors import McuNnError

MANIFEST = "model.json"
VECTORS = "test_vectors.npz"
# 3: files named by the prefix (<name>.h/.c) and the runtime as its own .h + .c ("runtime");
# 2 had model.h/model.c and the tables static in the runtime header.
SCHEMA_VERSION = 3
PRECISIONS = ("int8", "int16", "float32")
IN_CTYPES = {"int16_t": np.int16, "int32_t": np.int32, "float": np.float32}
OUT_CTYPES = {"int16_t": np.int16, "float": np.float32}
C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")


# ----------------------------------------------------------------------------- hashing
def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_digest(sources: Mapping[str, bytes]) -> str:
    """The model hash: sha256 over the C sources and headers (name, NUL, bytes, NUL, sorted by
    name). The firmware reports it in HELLO; build computes it from the bytes it compiles."""
    sha = hashlib.sha256()
    for name in sorted(sources):
        sha.update(name.encode() + b"\0" + sources[name] + b"\0")
    return sha.hexdigest()


def is_source(name: str) -> bool:
    return name.endswith((".c", ".h"))


def _finite(v: Any) -> Any:
    """Standard JSON has no NaN/Infinity (the SNR of a perfect match is inf): write null."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
        return None
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def manifest_bytes(m: dict) -> bytes:
    """model.json as written: standard JSON (numpy values converted, non-finite numbers null)."""
    return (json.dumps(_finite(m), indent=2, default=_jsonable, allow_nan=False) + "\n").encode()


def update_manifest(export_dir: Path, extra: dict) -> None:
    """Add fields to an export's model.json (e.g. the quantisation report's numbers), replacing
    the file in one rename so a reader never sees half of it."""
    mf = Path(export_dir) / MANIFEST
    m = json.loads(mf.read_text())
    m.update(extra)
    tmp = mf.with_name(f".{MANIFEST}.partial")
    tmp.write_bytes(manifest_bytes(m))
    os.replace(tmp, mf)


# ----------------------------------------------------------------------------- manifest schema
def _int(lo: int = 0) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scale(v: Any) -> bool:
    return _number(v) and v > 0


def _files(v: Any) -> bool:
    return (isinstance(v, dict) and bool(v) and all(
        isinstance(k, str) and k == Path(k).name and k not in ("", ".", "..", MANIFEST)
        and isinstance(h, str) and SHA256.match(h) for k, h in v.items()))


# field -> (check, what a valid value is)
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema_version": (lambda v: v == SCHEMA_VERSION, f"{SCHEMA_VERSION}"),
    "name": (lambda v: isinstance(v, str) and bool(C_IDENT.match(v)), "a C identifier"),
    "precision": (lambda v: v in PRECISIONS, " or ".join(PRECISIONS)),
    "input_kind": (lambda v: v in ("float", "tokens"), "float or tokens"),
    "input_size": (_int(1), "an integer >= 1"),
    "input_values_per_step": (_int(1), "an integer >= 1"),
    "output_size": (_int(1), "an integer >= 1"),
    "output_per_step": (lambda v: isinstance(v, bool), "true or false"),
    "has_step": (lambda v: isinstance(v, bool), "true or false (false: no <name>_step, whole sequences only)"),
    "max_steps": (_int(0), "an integer >= 0"),
    "input_scale": (_scale, "a positive number"),
    "output_scale": (_scale, "a positive number"),
    "in_ctype": (lambda v: isinstance(v, str) and v in IN_CTYPES, " or ".join(IN_CTYPES)),
    "out_ctype": (lambda v: isinstance(v, str) and v in OUT_CTYPES, " or ".join(OUT_CTYPES)),
    "header": (lambda v: isinstance(v, str) and v.endswith(".h"), "a .h file name"),
    "c_sources": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) and s.endswith(".c")
                                                                   for s in v), "a list of .c file names"),
    "files": (_files, "an object mapping file names to sha256 hex digests"),
    "sha256": (lambda v: isinstance(v, str) and bool(SHA256.match(v)), "64 lower-case hex digits"),
    "test_vectors": (_int(1), "an integer >= 1 (an export without test vectors proves nothing)"),
    "flash_bytes": (_int(0), "an integer >= 0"),
    "ram_bytes": (_int(0), "an integer >= 0"),
}


def _runtime(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("header"), str) and v["header"].endswith(".h")
            and isinstance(v.get("sources"), list) and bool(v["sources"])
            and all(isinstance(s, str) and s.endswith(".c") for s in v["sources"]) and _int(1)(v.get("version")))


FIELDS["runtime"] = (_runtime, 'an object {"header": a .h, "sources": [.c files], "version": an integer >= 1}')


def compile_sources(m: dict) -> list[str]:
    """The .c files a program using this export compiles: the model's, then the runtime's
    (once per program, however many models it links)."""
    return [*m["c_sources"], *m["runtime"]["sources"]]


def validate_manifest(m: Any, where: str) -> dict:
    if not isinstance(m, dict):
        raise McuNnError(f"{where} is not a JSON object; re-run mcu-nn export")
    if "schema_version" not in m or "files" not in m or not isinstance(m.get("files"), dict):
        raise McuNnError(f"{where} was written by an older mcu-nn (no schema_version/files with sha256); "
                         "re-run mcu-nn export")
    if m["schema_version"] in (1, 2):
        raise McuNnError(f"{where} has schema_version {m['schema_version']}: an export of an older mcu-nn "
                         "(model.h/model.c, runtime tables in the header), which this one cannot build; "
                         "re-run mcu-nn export")
    for key, (check, valid) in FIELDS.items():
        if key not in m:
            raise McuNnError(f"{where}: field {key!r} is missing; re-run mcu-nn export")
        if not check(m[key]):
            shown = json.dumps(m[key])[:60]
            raise McuNnError(f"{where}: field {key!r} is {shown}, expected {valid}; re-run mcu-nn export")
    listed = m["files"]
    for key in [m["header"], *m["c_sources"], m["runtime"]["header"], *m["runtime"]["sources"], VECTORS]:
        if key not in listed:
            raise McuNnError(f"{where}: field 'files' does not list {key}; re-run mcu-nn export")
    sat = m.get("saturation", {})
    if not isinstance(sat, dict) or not all(
            isinstance(v, dict) and all(isinstance(e, dict) and _int(0)(e.get("clipped")) and _int(0)(e.get("values"))
                                        for e in v.values()) for v in sat.values()):
        raise McuNnError(f"{where}: field 'saturation' is malformed; re-run mcu-nn export")
    if m["input_kind"] == "tokens" and m["input_values_per_step"] != 1:
        raise McuNnError(f"{where}: field 'input_values_per_step' must be 1 for a token model")
    if m["precision"] == "float32" and (m["in_ctype"] != "float" and m["input_kind"] == "float"):
        raise McuNnError(f"{where}: field 'in_ctype' is {m['in_ctype']} but a float32 model takes float")
    return m


def load_manifest(export_dir: Path) -> dict:
    """The validated manifest of ``export_dir`` (files are not hashed here: see open_export)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        what = "is a file, not an export directory" if export_dir.exists() else "does not exist"
        raise McuNnError(f"export directory {export_dir} {what}; run mcu-nn export first")
    mf = export_dir / MANIFEST
    if not mf.is_file():
        raise McuNnError(f"{mf} is missing; {export_dir} is not an mcu-nn export (run mcu-nn export first)")
    try:
        m = json.loads(mf.read_bytes().decode("utf-8"),
                       parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except (ValueError, UnicodeDecodeError) as e:
        line = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise McuNnError(f"{mf} is not valid JSON{line}; re-run mcu-nn export") from None
    return validate_manifest(m, str(mf))


# ----------------------------------------------------------------------------- the export
@dataclass
class Export:
    dir: Path
    manifest: dict
    sources: dict[str, bytes]            # the .c/.h files as read (and checked)
    digest: str                          # source_digest(sources): the model hash of this build
    modified: list[str] = field(default_factory=list)   # files that differ from the manifest
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest["name"]


def open_export(export_dir: Path, *, allow_modified: bool = False, vectors: bool = True) -> Export:
    """Read, hash and validate an export. Files that differ from the manifest are refused unless
    ``allow_modified`` (then they are listed in ``Export.modified``); missing ones always."""
    export_dir = Path(export_dir)
    m = load_manifest(export_dir)
    blobs: dict[str, bytes] = {}
    modified: list[str] = []
    for name, want in m["files"].items():
        path = export_dir / name
        if not path.is_file():
            raise McuNnError(f"{path} is missing (model.json lists it); re-run mcu-nn export")
        blobs[name] = path.read_bytes()
        if file_sha256(blobs[name]) != want:
            modified.append(name)
    extra = sorted(p.name for p in export_dir.iterdir() if p.is_file() and is_source(p.name)
                   and p.name not in m["files"])
    modified += [f"{n} (not in model.json)" for n in extra]
    if modified and not allow_modified:
        raise McuNnError(f"{export_dir}: {', '.join(modified)} differ{'s' if len(modified) == 1 else ''} from "
                         "the sha256 in model.json (edited after export?); re-run mcu-nn export, or pass "
                         "--allow-modified if you changed the files on purpose")
    sources = {n: b for n, b in blobs.items() if is_source(n)}
    check_header(m, sources[m["header"]].decode("utf-8", "replace"), export_dir / m["header"])
    ex = Export(export_dir, m, sources, source_digest(sources), modified)
    if not modified and ex.digest != m["sha256"]:
        raise McuNnError(f"{export_dir / MANIFEST}: field 'sha256' does not match the sources' hash; "
                         "re-run mcu-nn export")
    if vectors:
        ex.vectors = read_vectors(m, blobs[VECTORS], export_dir / VECTORS)
    return ex


def stage_sources(ex: Export, dest: Path) -> list[Path]:
    """Write the checked sources into ``dest`` (compile from there, not from the export) and
    return the paths of the C files to compile (the model's and the runtime's). ``dest`` is
    emptied first: nothing but the checked files can be found on its include path."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name, data in ex.sources.items():
        (dest / name).write_bytes(data)
    return [dest / c for c in compile_sources(ex.manifest)]


# ----------------------------------------------------------------------------- cross-checks
def _macro(text: str, name: str) -> Optional[str]:
    m = re.search(rf"^\s*#\s*define\s+{re.escape(name)}\s+(\S+)", text, re.M)
    return m.group(1) if m else None


def check_header(m: dict, header: str, where: Path) -> None:
    """The manifest fields that shape firmware and harnesses must say what the header says."""
    p, P = m["name"], m["name"].upper()
    if _macro(header, f"{P}_INPUT_SIZE") is None:
        raise McuNnError(f"{where} does not declare model {p!r} (no {P}_INPUT_SIZE): model.json field 'name' "
                         "does not match the header; re-run mcu-nn export")
    expect = {f"{P}_INPUT_SIZE": m["input_values_per_step"], f"{P}_OUTPUT_SIZE": m["output_size"],
              f"{P}_MAX_STEPS": m["max_steps"], f"{P}_OUTPUT_PER_STEP": int(m["output_per_step"]),
              f"{P}_HAS_STEP": int(m["has_step"])}
    fields = {f"{P}_INPUT_SIZE": "input_values_per_step", f"{P}_OUTPUT_SIZE": "output_size",
              f"{P}_MAX_STEPS": "max_steps", f"{P}_OUTPUT_PER_STEP": "output_per_step",
              f"{P}_HAS_STEP": "has_step"}
    if m["input_kind"] == "tokens":
        expect[f"{P}_VOCAB_SIZE"], fields[f"{P}_VOCAB_SIZE"] = m["input_size"], "input_size"
    for macro, want in expect.items():
        got = _macro(header, macro)
        if got is None or got != str(want):
            raise McuNnError(f"{where.parent / MANIFEST}: field {fields[macro]!r} ({json.dumps(m[fields[macro]])}) "
                             f"disagrees with {where.name} ({macro} {got}); re-run mcu-nn export")
    for suffix, key in (("in_t", "in_ctype"), ("out_t", "out_ctype")):
        t = re.search(rf"typedef\s+(\w+)\s+{re.escape(p)}_{suffix}\s*;", header)
        if not t or t.group(1) != m[key]:
            raise McuNnError(f"{where.parent / MANIFEST}: field {key!r} ({m[key]}) disagrees with {where.name} "
                             f"({t.group(1) if t else 'no typedef'} {p}_{suffix}); re-run mcu-nn export")


def read_vectors(m: dict, data: bytes, where: Path) -> dict[str, np.ndarray]:
    """Test vectors from the bytes of test_vectors.npz, checked against the manifest."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            vec = {k: z[k] for k in z.files}
    except Exception as e:     # a corrupt zip, a truncated member, an object array: one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise McuNnError(f"{where} is unreadable ({msg[:120]}); re-run mcu-nn export") from None
    for key in ("input_q", "expected"):
        if key not in vec:
            raise McuNnError(f"{where} has no array {key!r}; re-run mcu-nn export")
    xq, exp = vec["input_q"], vec["expected"]
    n, fin, fout = m["test_vectors"], m["input_values_per_step"], m["output_size"]
    tokens = m["input_kind"] == "tokens"
    want_in = IN_CTYPES[m["in_ctype"]]
    if xq.dtype != want_in or exp.dtype != OUT_CTYPES[m["out_ctype"]]:
        raise McuNnError(f"{where}: input_q/expected are {xq.dtype}/{exp.dtype}, model.json says "
                         f"{m['in_ctype']}/{m['out_ctype']}; re-run mcu-nn export")
    if xq.ndim != (2 if tokens else 3) or xq.shape[0] != n or (not tokens and xq.shape[2] != fin):
        shape = f"({n}, T)" if tokens else f"({n}, T, {fin})"
        raise McuNnError(f"{where}: input_q has shape {xq.shape}, model.json says {shape} "
                         f"(field 'test_vectors' = {n}); re-run mcu-nn export")
    steps = xq.shape[1]
    if steps < 1:
        raise McuNnError(f"{where}: the test vectors have 0 steps; re-run mcu-nn export with real inputs")
    if m["max_steps"] and steps > m["max_steps"]:
        raise McuNnError(f"{where}: {steps} steps exceed the model's max_steps {m['max_steps']}")
    if "lengths" in vec:
        ln = vec["lengths"]
        if ln.shape != (n,) or not np.issubdtype(ln.dtype, np.integer) or ln.min() < 1 or ln.max() > steps:
            raise McuNnError(f"{where}: lengths must be {n} integers in 1..{steps}; re-run mcu-nn export")
    want = (n, steps, fout) if m["output_per_step"] else (n, fout)
    if exp.shape != want:
        raise McuNnError(f"{where}: expected has shape {exp.shape}, model.json says {want}; re-run mcu-nn export")
    if m["precision"] == "float32":
        if not np.all(np.isfinite(exp)):
            raise McuNnError(f"{where}: expected holds NaN or infinity; re-run mcu-nn export")
        drift = vec.get("float_drift")
        if drift is None or drift.shape != (n,) or not np.all(np.isfinite(drift)) or np.any(drift < 0):
            raise McuNnError(f"{where}: a float32 export needs 'float_drift' with {n} finite values >= 0; "
                             "re-run mcu-nn export")
    return vec


def vector_lengths(vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Steps of each test vector: its ``lengths`` (variable-length exports) or all of them."""
    xq = vectors["input_q"]
    if "lengths" in vectors:
        return np.asarray(vectors["lengths"], np.int64)
    return np.full(xq.shape[0], xq.shape[1], np.int64)


def full_length_vectors(vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the test vectors that run every step (the bench firmware runs one length)."""
    if "lengths" not in vectors:
        return vectors
    keep = vector_lengths(vectors) == vectors["input_q"].shape[1]
    n = len(keep)
    return {k: (v[keep] if v.ndim and v.shape[0] == n else v) for k, v in vectors.items() if k != "lengths"}


def load_export(export_dir: Path, *, allow_modified: bool = False) -> tuple[dict, dict]:
    """The manifest and the test vectors of a checked export (see open_export)."""
    ex = open_export(export_dir, allow_modified=allow_modified)
    return ex.manifest, ex.vectors


def read_listed(ex: Export, name: str) -> Optional[bytes]:
    """The bytes of an optional file the manifest lists (e.g. qmodel.npz, vocab.json), checked
    against its sha256; None when the export has no such file."""
    want = ex.manifest["files"].get(name)
    if want is None:
        return None
    path = ex.dir / name
    if not path.is_file():
        raise McuNnError(f"{path} is missing (model.json lists it); re-run mcu-nn export")
    data = path.read_bytes()
    if file_sha256(data) != want and name not in ex.modified:
        raise McuNnError(f"{path} differs from the sha256 in model.json (edited after export?); re-run mcu-nn export")
    return data


def read_qmodel(ex: Export):
    """The quantised model saved in the export (qmodel.npz, hash-checked), or None when it has none."""
    from .qmodel_file import FILE, load_qmodel
    data = read_listed(ex, FILE)
    return None if data is None else load_qmodel(data, str(ex.dir / FILE))


def read_float_model(ex: Export):
    """The float Graph saved in the export (float_model.npz, hash-checked), or None for an export
    written before mcu-nn kept it (or of a graph the file cannot hold)."""
    from .qmodel_file import FLOAT_FILE, load_graph
    data = read_listed(ex, FLOAT_FILE)
    return None if data is None else load_graph(data, str(ex.dir / FLOAT_FILE))
