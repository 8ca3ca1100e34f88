"""Open a ``torch.export`` archive (.pt2) without running code from it.

A .pt2 is a zip whose members are JSON, raw tensor bytes and, for some payloads, pickles
(``sample_inputs``, weights or constants marked ``use_pickle``, the legacy
``serialized_*.pt`` members). ``torch.export.load`` unpickles several of those with
``weights_only=False`` (or falls back to it), so a crafted member runs code before any
error is shown. We therefore read the archive ourselves first: every member torch could
unpickle must load under ``torch.load(weights_only=True)`` (PyTorch's restricted
unpickler: tensors and plain containers only), and anything else that is not JSON, raw
tensor bytes named as such by the archive's own configs, or the format's small text
records is refused. Torch then loads the very bytes we checked (no second read of the file).
"""
from __future__ import annotations

import io
import json
import posixpath
import re
import zipfile

import torch

from ..errors import McuNnError

# Members that torch reads as text, never unpickles (archive format records).
_TEXT_RECORDS = {"archive_format", "archive_version", "version", "byteorder", "serialization_id",
                 ".format_version", ".storage_alignment"}
_CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")


def read_checked_pt2(path: str, data: bytes) -> io.BytesIO:
    """Check every member of the .pt2 in ``data``; return a buffer for ``torch.export.load``.
    Raises McuNnError naming the member that could run code."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
        raw = _raw_tensor_members(z, names)
        for name in names:
            if name.endswith("/") or _inert(name, raw):
                continue
            _check_pickled(path, name, z.read(name))
    except McuNnError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise McuNnError(f"{path}: cannot read the torch.export archive ({e}); save it again") from None
    return io.BytesIO(data)


def _inert(name: str, raw: set[str]) -> bool:
    """Members torch only parses as JSON or text, or maps as raw tensor bytes."""
    base = posixpath.basename(name)
    return (name.endswith(".json") or base in _TEXT_RECORDS or "/extra_files/" in f"/{name}"
            or name in raw)


def _raw_tensor_members(z: zipfile.ZipFile, names: list[str]) -> set[str]:
    """Members that every payload config lists as raw bytes (``use_pickle: false``). A member
    that any config marks as pickled is not raw: torch would unpickle it."""
    raw: set[str] = set()
    pickled: set[str] = set()
    for cfg in (n for n in names if n.endswith(_CONFIG_SUFFIXES)):
        try:
            entries = json.loads(z.read(cfg)).get("config", {})
        except (ValueError, AttributeError):
            raise McuNnError(f"member {cfg} is not valid JSON") from None
        folder = posixpath.dirname(cfg)
        for meta in entries.values() if isinstance(entries, dict) else ():
            if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                continue
            member = posixpath.join(folder, meta["path_name"])
            (pickled if meta.get("use_pickle", True) else raw).add(member)
    return raw - pickled


def _check_pickled(path: str, name: str, blob: bytes) -> None:
    """``blob`` is a member torch may unpickle: it must be a torch.save archive of plain
    tensors and containers (what torch.export.save writes there)."""
    if not blob.startswith(b"PK"):
        what = "a raw pickle" if blob[:1] == b"\x80" else "not tensor data"
        raise McuNnError(f"{path}: archive member {name} is {what}, which loading would unpickle and could "
                         "run code; mcu-nn only reads tensors and JSON from a .pt2: save the model again "
                         "with torch.export.save (or use a file you trust)")
    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:   # UnpicklingError names the global it refused (e.g. eval)
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        hint = f" (it calls {found.group(1)})" if found else ""
        raise McuNnError(f"{path}: archive member {name} is a pickle that does more than hold tensors"
                         f"{hint}; mcu-nn refuses to unpickle code from a "
                         ".pt2: save the model again with torch.export.save (or use a file you trust)") from None
