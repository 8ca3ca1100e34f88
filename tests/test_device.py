"""serial-test end to end: firmware built from an export, booted in QEMU (or on the host
board's pty), every test vector compared with the simulator, 0 differing bits."""
from __future__ import annotations


import numpy as np
import pytest

import qmodels as Q
from fixtures.make_standin import make_standin
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.device import DeviceClient, Emulator
from mcu_nn.onboard import serial_test
from mcu_nn.errors import McuNnError
from mcu_nn.sim import run

needs_qemu = pytest.mark.qemu            # skipped without the emulator (tests/conftest.py)
quiet = dict(log=lambda s: None, progress=False)


def _real_export(tmp_path, kind: str, precision: str, **kw):
    from mcu_nn.quant import quantize
    g = Q.make_graph(kind, seq_len=8, **kw)
    calib = Q.make_input(g, n=16, seed=7)
    if g.input_kind == "tokens":
        calib = np.clip(calib, 0, g.input_size - 1)
    q = quantize(g, calib, precision)
    x = calib[:4]
    d = tmp_path / f"{kind}_{precision}"
    write_export(q, d, x, run(q, x))
    return d


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps2-an385", "qemu-mps2-an500"])
def test_standin_on_every_emulated_board(tmp_path, board):
    make_standin(tmp_path)
    lines = []
    r = serial_test(tmp_path, board=board, log=lines.append, progress=False)
    assert r.ok and r.passed == r.vectors == 4, r.first_mismatch
    assert r.cycle_unit == "instructions" and 20 < r.mean_cycles_per_step <= r.max_cycles_per_step < 10_000
    assert r.outputs.shape == (4, 6, 2) and r.bytes_per_second > 0
    assert any("4/4 vectors passed" in ln for ln in lines)
    assert any("instructions per step" in ln for ln in lines)


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("kind,precision,board,kw", [
    ("lstm", "int8", "qemu-mps2-an386", {"readout": "last", "head": ("linear:3",)}),
    ("gru", "int8", "qemu-mps2-an386", {}),
    ("lstm", "float32", "qemu-mps2-an386", {"head": ("linear:2",)}),
    ("gru", "float32", "qemu-mps2-an386", {"readout": "last"}),
    ("lstm", "int8", "qemu-mps2-an385", {"proj": 3}),
    ("gru", "int16", "qemu-mps2-an385", {"bidirectional": True, "layers": 2}),
    ("rnn_tanh", "int8", "qemu-mps2-an386", {"vocab": 8, "readout": "final:0", "head": ("linear:2", "sigmoid")}),
])
def test_real_exports_over_the_emulated_serial_port(tmp_path, kind, precision, board, kw):
    """The issue's end-to-end: export, build, boot QEMU, serial-test over socket://, 0 bits differ."""
    d = _real_export(tmp_path, kind, precision, **kw)
    elf = build_firmware(d, board, log=lambda s: None).elf
    with Emulator(elf, board) as emu:
        assert emu.url.startswith("socket://127.0.0.1:")
        r = serial_test(d, port=emu.url, **quiet)
    assert r.ok and r.passed == 4, r.first_mismatch
    assert r.mean_cycles_per_step > 100


def test_a_wrong_board_answer_is_reported_in_full(tmp_path):
    make_standin(tmp_path)
    z = dict(np.load(tmp_path / "test_vectors.npz"))
    z["expected"][2, 3, 1] += 1                          # one bit of one value of one vector
    np.savez(tmp_path / "test_vectors.npz", **z)
    lines = []
    r = serial_test(tmp_path, board="host", log=lines.append, progress=False, allow_modified=True)
    assert not r.ok and r.passed == 3
    assert r.first_mismatch.startswith("vector 2 via RUN: 1 of 12 values differ at index (3, 1)")
    assert "board:" in r.first_mismatch and "simulator:" in r.first_mismatch
    assert any(ln.startswith("first mismatch") for ln in lines)


def test_bidirectional_sequences_are_streamed_and_read_back_in_chunks(tmp_path):
    # 300 steps x 2 outputs x 2 B = 1200 B of outputs and 300 x 3 x 2 B of inputs: several frames each
    make_standin(tmp_path, bidirectional=True, steps=300, max_steps=400, vectors=2)
    r = serial_test(tmp_path, board="host", **quiet)
    assert r.ok and r.outputs.shape == (2, 300, 4), r.first_mismatch


def test_long_inputs_are_streamed_not_refused(tmp_path):
    make_standin(tmp_path, features=200, steps=12, per_step=False, vectors=2)   # 400 B per step
    elf = build_firmware(tmp_path, "host", log=lambda s: None).elf
    with Emulator(elf, "host") as emu, DeviceClient(emu.url, timeout=2) as c:
        c.hello()
        y, _ = c.run(np.load(tmp_path / "test_vectors.npz")["input_q"][0])
        assert c.bytes_sent > 12 * 400
        assert np.array_equal(y, np.load(tmp_path / "test_vectors.npz")["expected"][0])
        with pytest.raises(McuNnError, match="STEP takes one step of 200 values"):
            c.step(np.zeros(3))


def test_real_board_without_port_is_refused(tmp_path):
    make_standin(tmp_path)
    with pytest.raises(McuNnError, match="nucleo-f411re is a real board.*--port"):
        serial_test(tmp_path, board="nucleo-f411re", **quiet)

