"""Reading an export directory back (the contract `mcu-nn export` writes): every later
stage — verify, build, bench, serial-test — loads it through here, so a missing or stale
directory gets the same one-line message everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import McuNnError

REQUIRED_KEYS = ("name", "precision", "sha256", "in_ctype", "out_ctype", "output_size")


def load_manifest(export_dir: Path) -> dict:
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise McuNnError(f"export directory {export_dir} does not exist; run mcu-nn export first")
    mf = export_dir / "model.json"
    if not mf.is_file():
        raise McuNnError(f"{mf} is missing; {export_dir} is not an mcu-nn export (run mcu-nn export first)")
    try:
        m = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise McuNnError(f"{mf} is not valid JSON (line {e.lineno}); re-run mcu-nn export") from None
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise McuNnError(f"{mf} lacks {', '.join(missing)}; re-run mcu-nn export with this mcu-nn version")
    return m


def load_export(export_dir: Path) -> tuple[dict, dict]:
    """The manifest and the test vectors (input, input_q, expected) of an export."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    for name in ("model.h", "model.c", "test_vectors.npz"):
        if not (export_dir / name).is_file():
            raise McuNnError(f"{export_dir / name} is missing; re-run mcu-nn export")
    try:
        with np.load(export_dir / "test_vectors.npz") as z:
            vectors = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise McuNnError(f"{export_dir / 'test_vectors.npz'} is unreadable ({e}); re-run mcu-nn export") from None
    for key in ("input_q", "expected"):
        if key not in vectors:
            raise McuNnError(f"{export_dir / 'test_vectors.npz'} has no {key!r}; re-run mcu-nn export")
    return manifest, vectors
