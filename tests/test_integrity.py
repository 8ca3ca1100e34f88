"""Integrity of an export: what was verified is what gets built and flashed.

Edited sources, weights, headers and test vectors are refused by verify, build, bench and
serial-test (unless --allow-modified, which says so, and the firmware's HELLO reports it);
firmware reports the hash of what it was compiled from; a corrupt or hand-edited manifest
or vector file gets one line naming the file and the field; an interrupted export leaves
nothing a later stage accepts."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import qmodels as Q
from clitools import CLI, ENV, mcu_nn, one_error_line
from fixtures.make_standin import make_standin
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.onboard import serial_test
from mcu_nn.device.client import DeviceClient
from mcu_nn.device.emulator import Emulator
from mcu_nn.errors import McuNnError
from mcu_nn.exportdir import open_export
from mcu_nn.sim import run
from mcu_nn.verify import verify

quiet = {"log": lambda s: None, "progress": False}


@pytest.fixture
def export(tmp_path) -> Path:
    d = tmp_path / "e"
    make_standin(d, steps=5, vectors=3)
    return d


def _edit_c_code(d: Path) -> None:          # the case: one output changed for one rare input
    with open(d / "standin.c", "a") as f:
        f.write("/* added after export */ int standin_backdoor(int x) { return x == 12345; }\n")


def _edit_weight(d: Path) -> None:
    text = (d / "standin.c").read_text()
    i = text.index("{{") + 2
    j = i + next(k for k, ch in enumerate(text[i:]) if ch.isdigit())
    (d / "standin.c").write_text(text[:j] + str((int(text[j]) + 1) % 10) + text[j + 1:])


def _edit_header(d: Path) -> None:
    (d / "standin.h").write_text((d / "standin.h").read_text().replace("#endif", "#define EXTRA 1\n#endif"))


def _edit_vectors(d: Path) -> None:
    z = dict(np.load(d / "test_vectors.npz"))
    z["expected"][0, 0, 0] += 1
    np.savez(d / "test_vectors.npz", **z)


def _add_source(d: Path) -> None:
    (d / "extra.c").write_text("int extra_symbol;\n")


def _shadow_header(d: Path) -> None:        # -I of the export dir would pick it up first
    (d / "stdint.h").write_text("#error shadowed\n")


EDITS = {"code added to standin.c": _edit_c_code, "a weight edited": _edit_weight, "standin.h edited": _edit_header,
         "test vectors edited": _edit_vectors, "a .c file added": _add_source, "a header added": _shadow_header}


@pytest.mark.parametrize("edit", EDITS)
def test_every_stage_refuses_an_edited_export(export, edit):
    EDITS[edit](export)
    for call in (lambda: verify(export, cross=False, log=lambda s: None),
                 lambda: build_firmware(export, "host", log=lambda s: None),
                 lambda: serial_test(export, board="host", **quiet)):
        with pytest.raises(McuNnError, match=r"differs? from the sha256 in model\.json.*--allow-modified"):
            call()
    assert not (export / "firmware" / "host" / "firmware.elf").exists()


def test_cli_refuses_an_edited_export_in_one_line(export):
    _edit_c_code(export)
    for cmd in (["verify", export], ["build", export, "--board", "host"],
                ["serial-test", export, "--board", "host"], ["bench", export]):
        line = one_error_line(mcu_nn(*cmd))
        assert "standin.c differs from the sha256 in model.json" in line, (cmd, line)


def test_allow_modified_says_so_and_the_firmware_reports_it(export):
    original = open_export(export).digest
    _edit_c_code(export)
    logs: list[str] = []
    assert verify(export, cross=False, allow_modified=True, log=logs.append).ok
    assert any("modified" in ln for ln in logs)
    r = serial_test(export, board="host", allow_modified=True, log=logs.append, progress=False)
    assert r.ok and r.device.modified and r.device.sha256 != original
    assert r.device.sha256 == open_export(export, allow_modified=True).digest
    assert any("modified on purpose" in ln for ln in logs)
    line = one_error_line(mcu_nn("serial-test", export, "--board", "host"))   # and without the flag: no
    assert "--allow-modified" in line


def test_firmware_built_from_edited_files_cannot_claim_the_export(export):
    """Build from edited sources, then put the original files back: the firmware's hash is the
    one of what it was compiled from, so the host refuses to compare."""
    saved = (export / "standin.c").read_bytes()
    _edit_c_code(export)
    elf = build_firmware(export, "host", log=lambda s: None, allow_modified=True).elf
    (export / "standin.c").write_bytes(saved)
    with Emulator(elf, "host") as emu:
        with DeviceClient(emu.url, timeout=2) as c:
            info = c.hello()
        assert info.modified and info.sha256 != json.loads((export / "model.json").read_text())["sha256"]
        with pytest.raises(McuNnError, match="from modified files.*not the export"):
            serial_test(export, port=emu.url, **quiet)


def test_a_clean_export_still_runs_and_reports_its_manifest_hash(export):
    r = serial_test(export, board="host", **quiet)
    assert r.ok and not r.device.modified
    assert r.device.sha256 == json.loads((export / "model.json").read_text())["sha256"]


# ----------------------------------------------------------------------------- manifest and vectors
def _set(field, value):
    def edit(m: dict) -> None:
        m[field] = value
    return edit


def _drop(field):
    return lambda m: m.pop(field)


MANIFEST_EDITS = {
    "precision double": (_set("precision", "double"), "'precision'"),
    "precision int4": (_set("precision", "int4"), "'precision'"),
    "sha256 not hex": (_set("sha256", "zz" * 32), "'sha256'"),
    "file hash not hex": (lambda m: m["files"].update({"standin.c": "not-a-hash"}), "'files'"),
    "name not a C identifier": (_set("name", "9 lives"), "'name'"),
    "name of another model": (_set("name", "other"), "'name'"),
    "output_size negative": (_set("output_size", -1), "'output_size'"),
    "output_size changed": (_set("output_size", 3), "'output_size'"),
    "input size changed": (_set("input_values_per_step", 4), "'input_values_per_step'"),
    "has_step flipped": (_set("has_step", False), "'has_step'"),
    "max_steps changed": (_set("max_steps", 8), "'max_steps'"),
    "output per step flipped": (_set("output_per_step", False), "'output_per_step'"),
    "in_ctype float": (_set("in_ctype", "float"), "'in_ctype'"),
    "test_vectors zero": (_set("test_vectors", 0), "'test_vectors'"),
    "test_vectors more than stored": (_set("test_vectors", 5), "'test_vectors'"),
    "files lost an entry": (lambda m: m["files"].pop("standin.c"), "'files'"),
    "a listed file outside the dir": (lambda m: m["files"].update({"../x.c": "0" * 64}), "'files'"),
    "input_scale NaN": (_set("input_scale", float("nan")), "not valid JSON"),
    "schema_version missing": (_drop("schema_version"), "older mcu-nn"),
    "header missing": (_drop("header"), "'header'"),
    "runtime missing": (_drop("runtime"), "'runtime'"),
    "runtime without sources": (lambda m: m["runtime"].update({"sources": []}), "'runtime'"),
    "runtime .c not listed in files": (lambda m: m["files"].pop("mcunn_fixedpoint.c"), "'files'"),
    "older layout (schema 2)": (_set("schema_version", 2), "older mcu-nn"),
}


@pytest.mark.parametrize("case", MANIFEST_EDITS)
def test_a_hand_edited_manifest_gets_one_line_naming_the_field(export, case):
    edit, field = MANIFEST_EDITS[case]
    m = json.loads((export / "model.json").read_text())
    edit(m)
    (export / "model.json").write_text(json.dumps(m))
    with pytest.raises(McuNnError) as e:
        open_export(export)
    msg = str(e.value)
    assert "\n" not in msg and "model.json" in msg and field in msg, msg


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "\xff\xfe", '{"schema_version": 2, "files": {}}'])
def test_a_corrupt_manifest_is_one_line(export, text):
    (export / "model.json").write_bytes(text.encode("latin-1"))
    line = one_error_line(mcu_nn("verify", export))
    assert "model.json" in line


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _vectors(d: Path) -> dict:
    with np.load(d / "test_vectors.npz") as z:
        return {k: z[k] for k in z.files}


VECTOR_EDITS = {
    "truncated": (lambda d, v: (d / "test_vectors.npz").read_bytes()[:200], "unreadable"),
    "empty file": (lambda d, v: b"", "unreadable"),
    "object array": (lambda d, v: _npz(input_q=np.array([None, 1], dtype=object), expected=v["expected"]),
                     "unreadable"),
    "no expected": (lambda d, v: _npz(input_q=v["input_q"]), "'expected'"),
    "zero vectors": (lambda d, v: _npz(input_q=v["input_q"][:0], expected=v["expected"][:0]), "input_q has shape"),
    "fewer vectors": (lambda d, v: _npz(input_q=v["input_q"][:2], expected=v["expected"][:2]), "input_q has shape"),
    "zero steps": (lambda d, v: _npz(input_q=v["input_q"][:, :0], expected=v["expected"][:, :0]), "0 steps"),
    "wrong dtype": (lambda d, v: _npz(input_q=v["input_q"].astype(np.float64), expected=v["expected"]), "float64"),
    "expected shape": (lambda d, v: _npz(input_q=v["input_q"], expected=v["expected"][:, :2]), "expected has shape"),
}


@pytest.mark.parametrize("case", VECTOR_EDITS)
def test_corrupt_test_vectors_are_refused_even_when_modification_is_allowed(export, case):
    make, words = VECTOR_EDITS[case]
    (export / "test_vectors.npz").write_bytes(make(export, _vectors(export)))
    with pytest.raises(McuNnError, match="test_vectors.npz differs"):
        open_export(export)
    with pytest.raises(McuNnError) as e:
        open_export(export, allow_modified=True)
    assert "test_vectors.npz" in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- writing an export
def _qexport(d: Path, name: str = "m", seed: int = 0, precision: str = "int8") -> dict:
    g = Q.make_graph("gru", seq_len=4, seed=seed, name=name)
    q = Q.quantize_graph(g, precision)
    x = Q.make_input(g, n=2)
    return write_export(q, d, x, run(q, x))


def test_export_target_rules(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(McuNnError, match="is a file"):
        _qexport(tmp_path / "file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(McuNnError, match="not empty and is not an mcu-nn export"):
        _qexport(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    _qexport(tmp_path / "e", name="first")
    with pytest.raises(McuNnError, match="an export of 'first', not of 'second'"):
        _qexport(tmp_path / "e", name="second")
    (tmp_path / "e" / "firmware").mkdir()
    m = _qexport(tmp_path / "e", name="first", seed=3)      # same name: replaced whole
    assert open_export(tmp_path / "e").digest == m["sha256"] and not (tmp_path / "e" / "firmware").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "e", "file"]   # no partial dirs left


def test_an_interrupted_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    d = tmp_path / "e"
    before = _qexport(d, seed=1)
    calls = {"n": 0}
    real_fsync = os.fsync

    def interrupted(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _qexport(d, seed=2)
    monkeypatch.undo()
    assert open_export(d).digest == before["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(os, "fsync", interrupted)
        calls["n"] = 0
        _qexport(tmp_path / "fresh", seed=2)
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()


@pytest.mark.slow
def test_ctrl_c_during_a_real_re_export_never_leaves_a_mixed_directory(tmp_path):
    """The issue's experiment: Ctrl-C at several moments of `mcu-nn export` over an earlier
    export of the same name; afterwards the directory is the old export or the new one, whole."""
    import torch
    model = torch.nn.GRU(3, 16, batch_first=True)

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = model

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    torch.export.save(torch.export.export(M().eval(), (torch.randn(1, 6, 3),)), tmp_path / "m.pt2")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((32, 6, 3)).astype(np.float32))
    out = tmp_path / "out"
    r = mcu_nn("export", tmp_path / "m.pt2", "-o", out, "--calib", tmp_path / "calib.npz", "--precision", "int16")
    assert r.returncode == 0, r.stderr
    digests = {open_export(out).digest}
    for delay in (1.0, 2.5, 4.0, 5.5):
        p = subprocess.Popen([*CLI, "export", str(tmp_path / "m.pt2"), "-o", str(out), "--calib",
                              str(tmp_path / "calib.npz"), "--precision", "int8"], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        ex = open_export(out)                       # whole: hashes, header and vectors all agree
        digests.add(ex.digest)
        assert verify(out, cross=False, log=lambda s: None).ok
        assert sorted(q.name for q in tmp_path.iterdir()) == ["calib.npz", "m.pt2", "out"]
    shutil.rmtree(out)
