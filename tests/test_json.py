"""`--json` as a CI job reads it: each command prints one object on stdout (nothing else there),
in the envelope of mcu_nn.jsonout, with the fields docs/json.md documents and of the documented
types. SCHEMA below is the checker's one source; docs/json.md's tables must say the same."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import zoo
from clitools import ROOT, mcu_nn
from mcu_nn.jsonout import JSON_SCHEMA

ENVELOPE = {"schema": "int", "command": "str", "mcu_nn_version": "str"}

_MODEL = {"model": "object", "model.name": "str", "model.source_file": "str|null", "model.input_kind": "str",
          "model.input_size": "int", "model.seq_len": "int", "model.output_size": "int",
          "model.output_per_step": "bool", "model.postprocess": "str|null"}
_LAYERS = {"layers": "list", "layers[].label": "str", "layers[].kind": "str", "layers[].source": "str|null",
           "layers[].params": "int", "layers[].macs_per_step": "int"}
_SATURATION = {"saturation": "object|null", "saturation.*.clipped": "int", "saturation.*.values": "int",
               "saturation.*.source": "str"}

SCHEMA: dict[str, dict[str, str]] = {
    "inspect": {**_MODEL, "params": "int", "macs_per_step": "int", **_LAYERS,
                "layers[].model_constants_bytes": "object", "layers[].model_constants_bytes.int8": "int",
                "layers[].model_constants_bytes.int16": "int", "layers[].model_constants_bytes.float32": "int",
                "precisions": "object", "precisions.*.model_constants_bytes": "int",
                "precisions.*.model_state_bytes": "int", "precisions.*.too_big_for": "list[str]"},
    "export": {"out_dir": "str", "manifest": "str", "manifest_schema_version": "int", "name": "str",
               "precision": "str", "weight_layout": "str", **_MODEL, "params": "int", "macs_per_step": "int",
               "model_constants_bytes": "int", "model_state_bytes": "int", **_LAYERS,
               "layers[].model_constants_bytes": "int", "accuracy": "object", "accuracy.sequences": "int",
               "accuracy.max_abs_error": "number", "accuracy.snr_db": "number|null",
               "accuracy.top1_agreement": "number|null", **_SATURATION, "too_big_for": "list[str]",
               "files": "list[str]", "sha256": "str", "report": "str|null"},
    "verify": {"dir": "str", "name": "str", "precision": "str", "ok": "bool", "vectors": "int", "steps": "int",
               "modes": "list[str]", "mismatches": "int", "first_mismatch": "str|null", "rule": "str",
               "max_abs_error": "number|null", **_SATURATION, "modified": "list[str]", "sizes": "object|null",
               "sizes.target": "str", "sizes.model_code_bytes": "int", "sizes.model_constants_bytes": "int",
               "sizes.shared_runtime_bytes": "int", "sizes.sections": "object", "sizes.sections.text": "int",
               "sizes.sections.rodata": "int", "sizes.sections.bss": "int", "sizes.sections.data": "int"},
    "build": {"board": "str", "elf": "str", "bin": "str|null", "hex": "str|null", "whole_firmware": "object",
              "whole_firmware.flash_bytes": "int", "whole_firmware.ram_bytes": "int",
              "whole_firmware.stack_bytes": "int|null", "whole_firmware.board_flash_bytes": "int|null",
              "whole_firmware.board_ram_bytes": "int|null"},
    "serial-test": {"ok": "bool", "export": "str", "board": "str", "model": "str", "precision": "str",
                    "inputs": "str", "sequences": "int", "passed": "int", "rule": "str", "first_mismatch": "str|null",
                    "step_checked": "bool", "float_model": "bool", "snr_db": "number|null",
                    "max_abs_error": "number|null", "top1_agreement": "number|null", "labels": "int|null",
                    "board_accuracy": "number|null", "float_accuracy": "number|null", "saturation": "object",
                    "saturation.*.clipped": "int", "saturation.*.values": "int", "saturation.*.source": "str",
                    "cycle_unit": "str", "mean_cycles_per_step": "number|null",
                    "max_cycles_per_step": "number|null", "bytes_per_second": "number", "retransmissions": "int",
                    "whole_firmware": "object|null", "whole_firmware.flash_bytes": "int",
                    "whole_firmware.ram_bytes": "int", "whole_firmware.stack_bytes": "int"},
    "soak": {"ok": "bool", "soak": "bool", "export": "str|null", "board": "str|null", "model": "str|null", "precision": "str", "rule": "str", "seed": "int", "requested": "int", "sequences": "int", "inferences": "int", "mismatches": "int", "first_mismatch": "str|null", "retransmissions": "int", "sequences_resent": "int", "link_faults": "int", "elapsed_s": "number", "sequences_per_s": "number", "inferences_per_s": "number", "rss_start_kb": "int", "rss_peak_kb": "int", "rss_growth_kb": "int", "seq_len": "int", "long_steps": "int", "long_sequences": "int", "step_sequences": "int", "window_bytes": "int", "cycle_unit": "str", "mean_cycles_per_step": "number|null", "link_bytes": "int", "simulator_s": "number", "host_cpu_s": "number"},
    "generate": {"ok": "bool", "prefix": "str", "board": "str", "simulator": "str", "board_ids": "list",
                 "simulator_ids": "list", "temperature": "number", "seed": "int", "per_step": "number|null",
                 "unit": "str", "board_name": "str|null"},
    "bench": {"models": "list", **{f"models[].{k}": t for k, t in {
        "instructions_per_step": "int", "macs_per_step": "int", "instructions_per_mac": "number",
        "flash_bytes": "int", "ram_bytes": "int", "board": "str", "name": "str", "precision": "str", "path": "str",
        "state_bytes": "int", "stack_bytes": "int", "weight_layout": "str", "vectors_checked": "int", "unit": "str",
        "model_code_bytes": "int", "model_constants_bytes": "int", "shared_runtime_bytes": "int",
        "instructions_per_step_f32": "int", "quantize_input_instructions": "int"}.items()}},
    "boards": {"boards": "list", **{f"boards[].{k}": t for k, t in {
        "name": "str", "arch": "str", "core": "str", "features": "list[str]", "flash": "list|null",
        "ram": "list|null", "counter": "str", "emulator": "str|null", "flash_method": "str",
        "description": "str"}.items()}},
}

_TYPES = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
          "object": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
          "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
          "null": lambda v: v is None}


def _values(doc, path: str) -> list:
    """Every value at ``path`` (a.b, a[].b, a.*.b); a path through null or a missing parent ends there."""
    out = [doc]
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        nxt = []
        for v in out:
            if part == "[]":
                nxt.extend(v if isinstance(v, list) else [])
            elif part == "*":
                nxt.extend(v.values() if isinstance(v, dict) else [])
            elif isinstance(v, dict):
                if part not in v:
                    raise AssertionError(f"missing field {path!r}")
                nxt.append(v[part])
        out = nxt
    return out


def check(doc: dict, command: str) -> None:
    """``doc`` has the envelope and every documented field with its documented type, and no
    undocumented field where docs/json.md lists an object's fields."""
    assert doc["schema"] == JSON_SCHEMA and doc["command"] == command
    schema = {**ENVELOPE, **SCHEMA[command]}
    for path, typ in schema.items():
        for v in _values(doc, path):
            assert any(_TYPES[t](v) for t in typ.split("|")), f"{command}: {path} = {v!r} is not {typ}"
    parents = {p.rsplit(".", 1)[0] if "." in p else "" for p in schema}
    for parent in parents:
        objs = [doc] if parent == "" else [v for v in _values(doc, parent) if isinstance(v, dict)]
        known = {p[len(parent) + 1:] if parent else p for p in schema
                 if (p.startswith(parent + ".") if parent else True)}
        known = {k.split(".")[0].replace("[]", "") for k in known}
        if "*" in known:
            continue
        for o in objs:
            extra = set(o) - known
            assert not extra, f"{command}: undocumented field(s) {sorted(extra)} in {parent or 'the top level'}"


def run_json(*args, ok: bool = True) -> dict:
    r = mcu_nn(*args)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    assert r.stdout.count("\n") == 1, r.stdout           # one line, nothing else on stdout
    return json.loads(r.stdout)


# ----------------------------------------------------------------------------- the docs say the same
def _doc_tables() -> dict[str, dict[str, str]]:
    text = (ROOT / "docs" / "json.md").read_text()
    tables, section = {}, None
    for line in text.splitlines():
        m = re.match(r"^## (.+)$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^\| `([^`]+)` \| ([^|]+?(?:\\\|[^|]+?)*) \|", line)
        if m and section:
            tables.setdefault(section, {})[m.group(1)] = m.group(2).replace("\\|", "|").strip()
    return tables


def test_docs_json_md_mirrors_the_checker():
    tables = _doc_tables()
    assert tables.pop("The envelope") == ENVELOPE
    assert tables == SCHEMA
    text = (ROOT / "docs" / "json.md").read_text()
    assert "## serial-test" in text and "validation.md" in text
    assert "schema_version" in text and "removed or changes meaning" in text


# ----------------------------------------------------------------------------- each command
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One int8 export through `mcu-nn export --json` (the other commands read it)."""
    tmp = tmp_path_factory.mktemp("json")
    model = zoo.make_model("lstm", input_size=4, hidden=8, readout="last", head="linear")
    path = zoo.save_model(model, tmp / "m.pt2", "pt2", zoo.example_input(model, T=6))
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 6, 4)).astype(np.float32))
    r = mcu_nn("export", path, "-o", tmp / "out", "--calib", tmp / "calib.npz", "--name", "jm", "--json")
    assert r.returncode == 0, r.stderr
    assert "calibrating jm" in r.stderr                 # the human lines went to stderr
    return path, tmp / "out", json.loads(r.stdout)


def test_export_json(exported):
    _, out, doc = exported
    check(doc, "export")
    manifest = json.loads((out / "model.json").read_text())
    assert doc["manifest_schema_version"] == manifest["schema_version"]
    assert doc["model_constants_bytes"] == manifest["flash_bytes"] == sum(
        layer["model_constants_bytes"] for layer in doc["layers"])
    assert doc["model_state_bytes"] == manifest["ram_bytes"] and doc["sha256"] == manifest["sha256"]
    assert doc["macs_per_step"] == 4 * 8 * (4 + 8) + 8 * 4 and doc["accuracy"]["sequences"] == 16


def test_inspect_json(exported):
    path, _, export_doc = exported
    doc = run_json("inspect", path, "--json")
    check(doc, "inspect")
    assert set(doc["precisions"]) == {"int8", "int16", "float32"}
    assert doc["precisions"]["int8"]["model_constants_bytes"] == export_doc["model_constants_bytes"]
    assert doc["macs_per_step"] == export_doc["macs_per_step"]


def test_verify_json(exported):
    _, out, _ = exported
    doc = run_json("verify", out, "--json", "--no-cross")
    check(doc, "verify")
    assert doc["ok"] and doc["mismatches"] == 0 and doc["sizes"] is None and doc["modes"] == ["run", "step"]


@pytest.mark.arm
def test_verify_json_sizes_in_the_vocabulary(exported):
    _, out, export_doc = exported
    doc = run_json("verify", out, "--json")
    check(doc, "verify")
    s = doc["sizes"]
    assert s["model_constants_bytes"] == export_doc["model_constants_bytes"]     # the same arrays, compiled
    assert s["model_code_bytes"] + s["model_constants_bytes"] + s["shared_runtime_bytes"] == \
        s["sections"]["text"] + s["sections"]["rodata"]


def test_verify_failure_is_json_too(exported, tmp_path):
    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    z = dict(np.load(bad / "test_vectors.npz"))
    z["expected"][0, 0] += 1
    np.savez(bad / "test_vectors.npz", **z)
    doc = run_json("verify", bad, "--json", "--no-cross", "--allow-modified", ok=False)
    check(doc, "verify")
    assert not doc["ok"] and doc["mismatches"] > 0 and doc["first_mismatch"].startswith("vector 0")
    assert doc["modified"] == ["test_vectors.npz"]


def test_boards_json():
    doc = run_json("boards", "--json")
    check(doc, "boards")
    assert doc["boards"][0]["name"] == "qemu-mps2-an386"


@pytest.mark.arm
def test_build_json(exported):
    _, out, _ = exported
    doc = run_json("build", out, "--json")
    check(doc, "build")
    wf = doc["whole_firmware"]
    assert 0 < wf["flash_bytes"] < wf["board_flash_bytes"] and Path(doc["elf"]).is_file()


@pytest.mark.qemu
def test_bench_json(exported):
    _, out, _ = exported
    doc = run_json("bench", out, "--json")
    check(doc, "bench")
    (m,) = doc["models"]
    assert m["flash_bytes"] == m["model_code_bytes"] + m["model_constants_bytes"] + m["shared_runtime_bytes"]
    assert m["macs_per_step"] == 4 * 8 * (4 + 8) + 8 * 4


def test_quiet_json_prints_the_json_and_nothing_else(exported, tmp_path):
    """-q after the subcommand: no progress line anywhere, the result still printed."""
    path, _, _ = exported
    r = mcu_nn("export", path, "-o", tmp_path / "q", "--calib", "random", "--json", "-q")
    assert r.returncode == 0, r.stderr
    check(json.loads(r.stdout), "export")
    assert "calibrating" not in r.stderr and "warning" in r.stderr      # warnings still shown
