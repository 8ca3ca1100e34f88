"""Output formats: an export laid out for a firmware project's own build system.

``mcu-nn package DIR --format F [-o OUT]``. Each format is one module here with a
``write(bundle) -> {relative path: bytes}`` function; adding a format is that module and one
line in :data:`FORMATS`. :func:`package` checks the export, runs the writer, adds
``package.json`` (every file with its sha256 and the export's model hash) and swaps the
directory into place."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

from ..errors import McuNnError
from .base import PACKAGE_MANIFEST, Bundle, check_target, open_bundle, package_manifest, write_tree

# format name -> module in this package
FORMATS: dict[str, str] = {
    "c": "c",
    "cmake": "cmake",
    "arduino": "arduino",
    "zephyr": "zephyr",
    "platformio": "platformio",
    "esp-idf": "esp_idf",
}


def default_output(export_dir: Path, fmt: str) -> Path:
    export_dir = Path(export_dir)
    return export_dir.parent / f"{export_dir.name}-{fmt}"


def package(export_dir: Path, fmt: str, out: Optional[Path] = None) -> Path:
    """Write export ``export_dir`` as format ``fmt`` into ``out`` (default ``DIR-FMT`` beside
    it); returns ``out``. The export is checked (sha256 of every file) before anything is written."""
    if fmt not in FORMATS:
        raise McuNnError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    b: Bundle = open_bundle(Path(export_dir))
    out = Path(out) if out is not None else default_output(export_dir, fmt)
    if out.resolve() == Path(export_dir).resolve():
        raise McuNnError(f"-o {out} is the export directory itself; choose another -o")
    check_target(out)
    mod = importlib.import_module(f".{FORMATS[fmt]}", __name__)
    files = mod.write(b)
    files[PACKAGE_MANIFEST] = package_manifest(b, fmt, files)
    write_tree(out, files)
    if hasattr(mod, "after"):         # e.g. the Arduino .zip beside the folder
        mod.after(b, out)
    return out
