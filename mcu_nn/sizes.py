"""The one size vocabulary (docs/sizes.md). Four figures, labelled with these words wherever
mcu-nn prints one (export, inspect, verify, build, bench, and their --json):

- **model constants**: the weights and tables in the model's .c (its ``const`` arrays, .rodata);
  export and inspect count them from the arrays they emit (manifest ``flash_bytes``).
- **model code**: the .text of the model's compiled objects (verify: Cortex-M4 objects;
  bench: the symbols that survive in the linked bench firmware).
- **shared runtime**: mcunn_fixedpoint.c, its code and its activation tables; one copy per
  firmware, however many models it links.
- **whole firmware**: the linked ELF of `mcu-nn build` (flash = text + rodata + data's image,
  RAM = data + bss), what you flash.

RAM beside them: **model state**, the caller-owned ``<name>_state_t`` (manifest ``ram_bytes``)."""
from __future__ import annotations

MODEL_CONSTANTS = "model constants"
MODEL_CODE = "model code"
SHARED_RUNTIME = "shared runtime"
WHOLE_FIRMWARE = "whole firmware"
MODEL_STATE = "model state"

# the keys of the same figures in --json output (docs/json.md)
KEYS = {MODEL_CONSTANTS: "model_constants_bytes", MODEL_CODE: "model_code_bytes",
        SHARED_RUNTIME: "shared_runtime_bytes", MODEL_STATE: "model_state_bytes"}


def split_objects(per_object: dict[str, dict[str, int]], runtime_sources: list[str]) -> dict[str, int]:
    """``{object stem: {"text": B, "rodata": B, ...}}`` -> the model code, model constants and
    shared runtime (text + rodata of the runtime's objects) in bytes, keyed as in KEYS."""
    runtime = {s.rsplit(".", 1)[0] for s in runtime_sources}
    out = {"model_code_bytes": 0, "model_constants_bytes": 0, "shared_runtime_bytes": 0}
    for stem, secs in per_object.items():
        if stem in runtime:
            out["shared_runtime_bytes"] += secs.get("text", 0) + secs.get("rodata", 0)
        else:
            out["model_code_bytes"] += secs.get("text", 0)
            out["model_constants_bytes"] += secs.get("rodata", 0)
    return out


def phrase(figures: dict[str, int]) -> str:
    """"model code 1,512 B, model constants 4,368 B, shared runtime 2,160 B" from a split_objects dict."""
    names = {v: k for k, v in KEYS.items()}
    return ", ".join(f"{names[k]} {v:,} B" for k, v in figures.items() if k in names)
