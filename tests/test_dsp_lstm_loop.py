"""The DSP LSTM unit loop in one asm statement (templates/ports/cortex_m_dsp/_lstm_loop_dsp.j2) and
its signed activation tables: the tables against sigmoid_q15 / tanh_q15 on every int16 (the
interpolation the asm does, in numpy) and in the rendered runtime; whole int8 models through
the loop on the emulated Cortex-M4F (and M7, M33), bit for bit against the simulator on every
test vector (bench_export raises on the first differing output): cell_frac 0, 11, 12, 13 and 15,
shift 32, 33 and 36, saturating inputs, packed and wide weights, loop and unrolled dot segments,
projection, stacked layers, odd widths (the zero-padded last chunk, segments shorter than a
chunk); and the asm at -O0 / -Os."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kernel_harness as kh
import qmodels as Q
from runtime_program import RUNTIME_TEXT

from mcu_nn import fixedpoint as fp
from mcu_nn.bench import bench_export
from mcu_nn.codegen import write_export
from mcu_nn.codegen.emit import signed_table
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from mcu_nn.verify import verify

qemu = pytest.mark.qemu
LOOP_MARK = "ldmia sp, {r5, r6, r7, r8, r9, r10, r11}"      # the cell phase of the asm loop


@pytest.mark.parametrize("sigmoid", [True, False])
def test_signed_tables_interpolate_to_the_functions_on_every_int16(sigmoid):
    s = signed_table(fp.SIGMOID_TABLE if sigmoid else fp.TANH_TABLE, sigmoid)
    assert s.size == 1025 and s.min() >= -32767 and s.max() <= 32767      # int16 halves for SMLAD
    v = np.arange(-32768, 32768, dtype=np.int64)
    j, f = (v >> 6) + 512, v & 63
    got = (s[j] * (64 - f) + s[j + 1] * f + 32 + (v >> 31)) >> 6
    assert np.array_equal(got, (fp.sigmoid_q15 if sigmoid else fp.tanh_q15)(v))


def test_runtime_defines_the_signed_tables():
    for name, table, sig in (("mcunn_sigmoid_stable", fp.SIGMOID_TABLE, True), ("mcunn_tanh_stable", fp.TANH_TABLE, False)):
        body = RUNTIME_TEXT.split(f"{name}[MCUNN_STABLE_LEN] = {{", 1)[1].split("};", 1)[0]
        values = np.array([int(v) for v in body.replace("\n", " ").split(",") if v.strip()])
        assert np.array_equal(values, signed_table(table, sig))


def _model(tmp_path: Path, I: int, H: int, **kw) -> Path:
    return kh.export_model(tmp_path, "lstm", I, H, **kw)


MODELS = {
    # name: (I, H, options, takes the asm loop)
    "cf0_loud": (8, 12, dict(cell_frac=0, loud=30.0), True),
    "cf11": (4, 8, dict(cell_frac=11, gain=3.0), True),
    "cf12": (8, 8, dict(cell_frac=12, gain=3.0, loud=10.0), True),
    "cf13": (12, 4, dict(cell_frac=13, gain=3.0), True),
    "cf15_loud": (8, 12, dict(cell_frac=15, gain=4.0, loud=40.0), True),
    "shift32_loud": (4, 16, dict(shift=32, gain=4.0, loud=40.0), True),
    "shift33": (16, 8, dict(shift=33), True),
    "shift36": (8, 4, dict(shift=36), True),
    "looped_segments": (76, 80, {}, True),             # 19 / 20 chunks: the 4-chunk loop passes
    "wide": (6, 10, dict(layout="wide", cell_frac=15, loud=20.0), True),
    "wide_looped": (40, 38, dict(layout="wide"), True),
    "proj": (8, 12, dict(proj=4), True),
    "two_layers": (8, 8, dict(layers=2, loud=10.0), True),
    # odd widths: the zero-padded last chunk (1, 2 or 3 columns read), segments without a whole chunk
    "odd_5x7": (5, 7, dict(loud=20.0), True),
    "i2_h6": (2, 6, dict(gain=3.0, loud=20.0), True),
    "i3_h1": (3, 1, dict(gain=3.0), True),
    "i1_h3": (1, 3, dict(cell_frac=15, loud=30.0), True),
    "i6_h32": (6, 32, {}, True),
    "wide_odd": (5, 7, dict(layout="wide", loud=20.0), True),
    "wide_i1_h5": (1, 5, dict(layout="wide"), True),
    "bidirectional": (6, 10, dict(bidirectional=True, loud=10.0), True),
    "two_layers_odd": (3, 5, dict(layers=2, gain=3.0), True),
}


@qemu
@pytest.mark.parametrize("key", MODELS)
def test_lstm_asm_loop_bit_exact_on_cortex_m4(tmp_path: Path, key: str) -> None:
    I, H, opts, loop = MODELS[key]
    d = _model(tmp_path, I, H, **opts)
    src = "".join(p.read_text() for p in d.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    assert (LOOP_MARK in src) == loop
    r = bench_export(d, "qemu-mps2-an386")                        # raises on the first differing bit
    assert r.vectors_checked == 4 and r.path == "simd"
    if key in ("cf0_loud", "wide", "odd_5x7"):
        v = verify(d, cross=False, log=lambda s: None)            # the portable C, same stream, on the host
        assert v.ok and v.mismatches == 0, v.first_mismatch


@qemu
@pytest.mark.parametrize("board", ["qemu-mps2-an500", "qemu-mps2-an505"])
def test_lstm_asm_loop_on_cortex_m7_and_m33(tmp_path: Path, board: str) -> None:
    d = _model(tmp_path, 16, 32, cell_frac=15, gain=3.0, loud=20.0)
    r = bench_export(d, board)
    assert r.vectors_checked == 4 and r.path == "simd"


@qemu
@pytest.mark.parametrize("opt", ["-O0", "-Os"])
def test_asm_builds_and_is_bit_exact_at_other_optimisation_levels(tmp_path: Path, monkeypatch, opt: str) -> None:
    # r7 is the frame pointer at -O0 (the loop saves it itself); fewer registers are free there
    import mcu_nn.bench as bench
    monkeypatch.setattr(bench, "CFLAGS", [opt if f == "-O2" else f for f in bench.CFLAGS])
    for kind in ("lstm", "gru"):
        g = Q.make_graph(kind, input_size=8, hidden=12, seq_len=5, gain=3.0)
        q = quantize(g, Q.make_input(g, n=16, seed=4), "int8")
        x = Q.make_input(g, n=4) * 10.0
        d = tmp_path / kind
        write_export(q, d, x, run(q, x))
        r = bench_export(d, "qemu-mps2-an386")
        assert r.vectors_checked == 4 and r.instructions_per_step_f32 > r.instructions_per_step
