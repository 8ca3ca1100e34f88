"""``c``: the export folder as it is (still an export: verify, build and serial-test accept it)."""
from __future__ import annotations

from ..exportdir import MANIFEST
from .base import Bundle, Files


def write(b: Bundle) -> Files:
    files = {n: (b.ex.dir / n).read_bytes() for n in b.ex.manifest["files"]}
    files.update(b.ex.sources)          # the checked bytes of every source
    files[MANIFEST] = (b.ex.dir / MANIFEST).read_bytes()
    return files
