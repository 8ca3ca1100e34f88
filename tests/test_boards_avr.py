"""The AVR boards (issue 10) end to end under simavr: an int8 GRU that fits the Uno's 2 KiB of
SRAM, and the demo model on the Mega, built, serial-tested bit-exact over the emulated UART (RUN
and STEP) and benched in cycles per step; the generated C compiled for AVR with -Werror, its
constants in flash; a model too big for the Uno refused before compiling."""
from __future__ import annotations

import subprocess
from pathlib import Path
import warnings

import pytest

import qmodels as Q
from fixtures.make_standin import make_standin
from mcu_nn.bench import bench_export
from mcu_nn.boards import BOARDS
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.onboard import serial_test
from mcu_nn.errors import McuNnError
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from mcu_nn.toolchain import section_sizes

quiet = dict(log=lambda s: None)


def _export(tmp_path_factory, kind: str, precision: str, name: str, hidden: int = 12):
    g = Q.make_graph(kind, input_size=3, hidden=hidden, seq_len=8, gain=1.0, name=name)
    q = quantize(g, Q.make_input(g, n=16, seed=3), precision)
    x = Q.make_input(g, n=3, seed=4)
    d = tmp_path_factory.mktemp(name) / name
    write_export(q, d, x, run(q, x))
    return d


@pytest.fixture(scope="module")
def gru_export(tmp_path_factory):
    return _export(tmp_path_factory, "gru", "int8", "g8")


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The demo's model (LSTM(3->24) + Linear(24->4)), briefly trained, int8."""
    from mcu_nn.demo import train_demo_model
    from mcu_nn.pipeline import export_model
    out = tmp_path_factory.mktemp("demo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = train_demo_model(out, epochs=1, **quiet)
    export_model(model, out / "har", precision="int8", calib=str(out / "calib.npz"), name="har", **quiet)
    return out / "har"


def _end_to_end(export_dir, board: str) -> None:
    r = build_firmware(export_dir, board, **quiet)
    b = BOARDS[board]
    assert r.flash_bytes < b.flash.size and r.ram_bytes + b.stack_bytes <= b.ram.size
    t = serial_test(export_dir, board=board, progress=False, **quiet)
    assert t.ok and t.passed == t.vectors > 0, t.first_mismatch
    assert t.device.board == board and t.cycle_unit == "cycles" and t.mean_cycles_per_step > 1000
    br = bench_export(export_dir, board, vectors=2)
    assert br.vectors_checked == 2 and br.unit == "cycles" and br.path == "portable"
    # the server's count (a call through the glue, the overflow interrupt at other moments) and
    # the bench's agree closely: both are simavr's cycles
    assert abs(t.mean_cycles_per_step - br.instructions_per_step) < 0.02 * br.instructions_per_step


@pytest.mark.avr
def test_int8_gru_on_the_uno(gru_export):
    _end_to_end(gru_export, "avr-atmega328p")


@pytest.mark.avr
def test_int8_gru_and_demo_model_on_the_mega(gru_export, demo_export):
    _end_to_end(gru_export, "avr-atmega2560")
    _end_to_end(demo_export, "avr-atmega2560")


@pytest.mark.avr
@pytest.mark.parametrize("kind,precision", [("gru", "int16"), ("lstm", "int8"), ("lstm", "int16"),
                                            ("rnn_tanh", "int8"), ("gru_reset_before", "int8")])
def test_generated_c_compiles_for_avr_with_constants_in_flash(tmp_path_factory, kind, precision):
    """16-bit int: -Wall -Wextra -Werror; Harvard flash: nothing of the model in .data (SRAM)."""
    d = _export(tmp_path_factory, kind, precision, f"{kind}_{precision}")
    for src in (f"{d.name}.c", "mcunn_fixedpoint.c"):     # the model, and the runtime's tables
        obj = d.parent / f"{Path(src).stem}.o"
        r = subprocess.run(["avr-gcc", "-mmcu=atmega328p", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
                            "-DMCUNN_PORTABLE", "-c", str(d / src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        sec = section_sizes(obj)
        assert sec.get(".progmem.data", 0) > 0 and sec.get(".data", 0) == 0 and sec.get(".rodata", 0) == 0, src


@pytest.mark.avr
def test_lstm_int16_bit_exact_on_the_uno(tmp_path_factory):
    """The LSTM cell's rounding constant 2^(29 - cell_frac) needs int32 where int is 16 bits."""
    d = _export(tmp_path_factory, "lstm", "int16", "l16", hidden=8)
    br = bench_export(d, "avr-atmega328p")
    assert br.vectors_checked == 3 and br.instructions_per_step > 1000


def test_rows_and_refusal_before_compiling(tmp_path, monkeypatch):
    uno, mega = BOARDS["avr-atmega328p"], BOARDS["avr-atmega2560"]
    assert uno.ram.size == 2048 and mega.ram.size == 8192 and uno.counter == "cycles"
    assert uno.counter_units(1234) == (1234.0, "cycles") and "-DMCUNN_PORTABLE" in uno.cflags()
    make_standin(tmp_path, bidirectional=True, max_steps=300, features=1)
    monkeypatch.setenv("PATH", str(tmp_path))         # no compiler: the refusal must come first
    with pytest.raises(McuNnError, match=r"do not fit in this board's RAM: .* avr-atmega328p has 2,048 B") as e:
        build_firmware(tmp_path, "avr-atmega328p", **quiet)
    assert "\n" not in str(e.value)
