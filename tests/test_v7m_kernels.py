"""ARMv7-M without DSP (MCUNN_V7M, templates/ports/cortex_m3) on the emulated Cortex-M3 (QEMU
mps2-an385, issue 14).

1. The MLA group dot products, both forms: the call-site asm of `_dot_v7m.j2` (column count known
   when the C is generated) and mcunn_dot_s8_32_g{1,3,4}_v7m, against the portable twins in the same
   firmware and exact numpy, bit for bit: every column count 1..17 and odd ones beyond, every
   product at -128 * -32768, sums near the int32 bound the export proves, non-zero starting
   accumulators, the returned weight pointer. The same for the LDRSH/LDRSB + MLA/SMLAL kernels
   mcunn_dot_{s16_32,s16_64,s8_64}_g{1,3,4}_v7m (64-bit sums far beyond 2^32).
2. The asm cells of `_cell_v7m.j2` against fixedpoint.py: saturated pre-activations, extreme c,
   every cell_frac 0..15, the GRU's n_x / n_h over +-2^30 (the shift >= 33 path).
3. Whole int8 and int16 models: `mcu-nn bench` compares every output of every test vector with the simulator
   for the v7m build and for the portable build (-DMCUNN_PORTABLE) on the M3, and the portable C
   is checked on the host: odd sizes, saturating inputs, cell_frac 0 / 15, shift 32 / < 32,
   bidirectional, RNN, token-id inputs; int16 weights and int8 weights with 64-bit accumulators
   (test_dsp_int16's models) and the int16 layout of int8 weights (int32 accumulators).
4. The manifest's v7m_kernel and the bench label "v7m".
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import kernel_harness as kh
import qmodels as Q
from mcu_nn import fixedpoint as fx
from mcu_nn.bench import bench_export, kernel_path
from mcu_nn.codegen import write_export
from mcu_nn.codegen.emit import environment, v7m_kernel_of
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from mcu_nn.verify import verify
from test_dsp_int16 import MODELS as MODELS64, _acc64, _model as _model64

qemu = pytest.mark.qemu                  # skipped without the emulator (tests/conftest.py)
BOARD = "qemu-mps2-an385"

KERNEL_SOURCE = kh.kernel_program("""{% for c in cases %}
/* the call-site form: the accumulators start at the first chunk (no starting value) */
static void site{{ loop.index0 }}(void)
{
    int32_t acc[4];
    const int8_t *w = W{{ loop.index0 }};
{{ dot(c.R, c.n, 'w', 'X%d' % loop.index0, 'acc') }}    put('S', {{ loop.index0 }}, acc, {{ c.R }}, (long)(w - W{{ loop.index0 }}));
}
{% endfor %}
int main(void)
{
    int32_t acc[4];
    const int8_t *end;
    int r;
{% for c in cases %}
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_s8_32_g{{ c.R }}(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('F', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_s8_32_g{{ c.R }}_c(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('P', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
    site{{ loop.index0 }}();
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
""", 32, guard="MCUNN_V7M && !MCUNN_DSP",
                                  imports='{% from "ports/cortex_m3/_dot_v7m.j2" import dot %}\n')


@qemu
def test_v7m_group_kernels_bit_exact_on_cortex_m3(tmp_path: Path) -> None:
    cases = kh.group_cases(np.random.default_rng(3), modes=("min", "max", "edge", "any"),
                          extreme_sizes=(1, 3, 4, 5, 8, 9, 511))             # 511 * 2^22 < 2^31
    src = environment().from_string(KERNEL_SOURCE).render(cases=cases)
    text = kh.build_and_run(tmp_path, src, "dotv7m", BOARD)
    # F: the function, P: its portable twin (from the starting accumulators), S: the call-site asm (from 0)
    kh.check(cases, kh.printed(text, "FPS", 32), "FPS", fresh="S")
    assert kh.largest_sum(cases, 32) > 1 << 30      # near the int32 bound the export allows


WIDE_SOURCE = kh.kernel_program("""int main(void)
{
    int64_t acc[4];
    int32_t a32[4];
    int r;
{% for c in cases %}
    {
        const {{ c.wt }} *end;
{% set i = loop.index0 %}
{% for tag, fn in (('F', c.fn), ('P', c.fn ~ '_c')) %}
{% if c.ab == 64 %}
        for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ i }}[r];
        end = {{ fn }}(W{{ i }}, X{{ i }}, {{ c.n }}, acc);
{% else %}
        for (r = 0; r < {{ c.R }}; ++r) a32[r] = (int32_t)A{{ i }}[r];
        end = {{ fn }}(W{{ i }}, X{{ i }}, {{ c.n }}, a32);
        for (r = 0; r < {{ c.R }}; ++r) acc[r] = a32[r];
{% endif %}
        put('{{ tag }}', {{ i }}, acc, {{ c.R }}, (long)(end - W{{ i }}));
{% endfor %}
    }
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
""", 64, guard='MCUNN_V7M && !MCUNN_DSP')


@qemu
def test_v7m_wide_kernels_bit_exact_on_cortex_m3(tmp_path: Path) -> None:
    cases = kh.group_cases(np.random.default_rng(16), (("s16", 32), ("s16", 64), ("s8", 64)),
                          modes=("min", "max", "edge", "any"), extreme_sizes=(1, 2, 3, 4, 5, 8, 9, 511, 601))
    src = environment().from_string(WIDE_SOURCE).render(cases=cases)
    text = kh.build_and_run(tmp_path, src, "dotwide", BOARD)
    assert "mcunn_dot_s16_64_g4_v7m" in (tmp_path / "mcunn_fixedpoint.h").read_text()
    kh.check(cases, kh.printed(text, "FP", 64), "FP")
    assert kh.largest_sum(cases, 64) > 1 << 38      # 64-bit sums well beyond 32 bits


CELL_SOURCE = kh.cell_program("ports/cortex_m3/_cell_v7m.j2", """    for (u = 0; u < {{ n }}; ++u) {
{{ gru_cell('out[u]', 'G[u][0]', 'G[u][1]', 'G[u][2] >> 1', 'G[u][3] >> 1', 'G[u][4]') }}    }
    dump("G33");
""", guard="MCUNN_V7M")


@qemu
def test_v7m_cells_bit_exact_on_cortex_m3(tmp_path: Path) -> None:
    n = 160
    pre, c0, gru = kh.cell_inputs(np.random.default_rng(8))
    # and every edge pre-activation against every edge c (the interpolation's ends, saturation)
    e = np.array(kh.EDGE16, np.int64)
    pre[:len(e), 0], pre[:len(e), 1], pre[:len(e), 2], pre[:len(e), 3] = e, e[::-1], e, e[::-1]
    c0[len(e):2 * len(e)] = e
    src = environment().from_string(CELL_SOURCE).render(n=n, pre=kh.c_rows(pre), c0=", ".join(str(int(v)) for v in c0),
                                                        gru=kh.c_rows(gru))
    as16 = kh.cell_results(kh.build_and_run(tmp_path, src, "cells", BOARD))
    kh.check_lstm_cells(as16, pre, c0)
    np.testing.assert_array_equal(as16("G33"), fx.gru_cell(gru[:, 0], gru[:, 1], gru[:, 2] >> 1, gru[:, 3] >> 1,
                                                           gru[:, 4]), err_msg="GRU cell, shift >= 33 path")


# ------------------------------------------------------------------------------------ whole models
_model = kh.export_model


MODELS = {
    # name: (kind, I, H, options)
    "lstm_16x32": ("lstm", 16, 32, {}),
    "lstm_odd_loud": ("lstm", 7, 9, dict(gain=4.0, loud=40.0)),
    "lstm_13x21": ("lstm", 13, 21, {}),
    "lstm_3x2": ("lstm", 3, 2, {}),
    "lstm_shift32": ("lstm", 5, 11, dict(shift=32)),
    "lstm_cf0": ("lstm", 6, 8, dict(cell_frac=0, loud=20.0)),
    "lstm_cf15": ("lstm", 6, 8, dict(cell_frac=15, gain=3.0)),
    "lstm_shift_lt32": ("lstm", 5, 7, dict(real=False)),
    "lstm_bidir": ("lstm", 10, 6, dict(bidirectional=True)),
    "gru_bidir": ("gru", 9, 13, dict(bidirectional=True)),
    "gru_shift32_loud": ("gru", 6, 10, dict(shift=32, gain=4.0, loud=40.0)),
    "gru_17x3": ("gru", 17, 3, {}),
    "gru_loud": ("gru", 21, 19, dict(gain=4.0, loud=40.0)),
    "gru_shift_lt32": ("gru", 5, 7, dict(real=False)),
    "rnn_tanh": ("rnn_tanh", 9, 11, dict(gain=3.0, loud=20.0)),
    "rnn_relu": ("rnn_relu", 5, 6, {}),
}


@qemu
@pytest.mark.parametrize("key", MODELS)
def test_int8_models_bit_exact_v7m_and_portable(tmp_path: Path, key: str) -> None:
    kind, I, H, opts = MODELS[key]
    d = _model(tmp_path, kind, I, H, **opts)
    src = "".join(p.read_text() for p in d.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    assert re.search(r"mcunn_dot_s8_32_g\d", src), "this case must use the int8 int32 kernels"
    r = verify(d, cross=False, log=lambda s: None)                 # portable C on the host
    assert r.ok and r.mismatches == 0, r.first_mismatch
    v7m = bench_export(d, BOARD)                                   # raises on the first differing bit
    port = bench_export(d, BOARD, portable=True)
    assert v7m.vectors_checked == port.vectors_checked == 4
    assert (v7m.path, port.path) == ("v7m", "portable")
    if v7m.macs_per_step >= 100:       # a 5x6 RNN (66 MACs): the portable C inlined with n known is 5 % faster
        assert v7m.instructions_per_step < port.instructions_per_step
    layers = [la for la in json.loads((d / "model.json").read_text())["layers"] if "dsp_kernel" in la]
    assert layers and all(la["v7m_kernel"] == "v7m" for la in layers)


@qemu
@pytest.mark.parametrize("key", MODELS64)
def test_acc64_models_bit_exact_v7m_and_portable(tmp_path: Path, key: str) -> None:
    """int16 weights and int8 weights with 64-bit accumulators: the SMLAL kernels, MCUNN_RQ_HI64."""
    kind, I, H, opts = MODELS64[key]
    d = _model64(tmp_path, kind, I, H, **opts)
    assert _acc64(d), "this case must use 64-bit accumulators"
    v7m = bench_export(d, BOARD)                                   # raises on the first differing bit
    port = bench_export(d, BOARD, portable=True)
    assert v7m.vectors_checked == port.vectors_checked == 4
    assert (v7m.path, port.path) == ("v7m", "portable")
    assert v7m.instructions_per_step < port.instructions_per_step


WIDE = {
    "lstm_wide": ("lstm", 13, 9, dict(gain=2.0, loud=20.0)),
    "lstm_wide_cf0_shift32": ("lstm", 6, 8, dict(cell_frac=0, shift=32)),
    "gru_wide_bidir": ("gru", 7, 5, dict(bidirectional=True)),
    "gru_wide_shift32": ("gru", 6, 10, dict(shift=32, gain=4.0, loud=40.0)),
    "rnn_wide": ("rnn_tanh", 9, 11, {}),
}


@qemu
@pytest.mark.parametrize("key", WIDE)
def test_int8_wide_layout_bit_exact_v7m_and_portable(tmp_path: Path, key: str) -> None:
    """int8 weights stored as int16 (--weight-layout wide), int32 accumulators: the MLA kernel of int16."""
    kind, I, H, opts = WIDE[key]
    g = Q.make_graph(kind, input_size=I, hidden=H, seq_len=5, gain=opts.get("gain", 1.0),
                     bidirectional=kind == "gru" and "bidir" in key, readout="final:0,1" if "bidir" in key else None)
    q = quantize(g, Q.make_input(g, n=16, seed=4), "int8")
    if "shift" in opts:
        q = kh.set_shift(q, opts["shift"])
    if "cell_frac" in opts:
        q = kh.with_cell_frac(q, opts["cell_frac"])
    x = Q.make_input(g, n=4) * opts.get("loud", 1.0)
    d = tmp_path / key
    write_export(q, d, x, run(q, x), weight_layout="wide")
    assert re.search(r"mcunn_dot_s16_32_g\d", (d / "model.c").read_text())
    v7m = bench_export(d, BOARD)
    port = bench_export(d, BOARD, portable=True)
    assert (v7m.path, port.path) == ("v7m", "portable") and v7m.vectors_checked == 4
    assert v7m.instructions_per_step < port.instructions_per_step


@qemu
@pytest.mark.parametrize("kind,precision", [("peephole_lstm", "int8"), ("peephole_lstm", "int16"),
                                            ("gru_reset_before", "int8"), ("gru_reset_before", "int16")])
def test_cell_units_bit_exact_v7m_and_portable(tmp_path: Path, kind: str, precision: str) -> None:
    """The hand-written cells call the group kernels as functions: the v7m ones on the M3."""
    import math
    from mcu_nn.cells import cell_of
    from mcu_nn.ir import DirectionWeights, Graph, Recurrent
    I, H = 7, 9
    rng = np.random.default_rng(5)
    k = 1 / math.sqrt(H)
    G = cell_of(kind).n_gates * H

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(np.float32)

    d = DirectionWeights(u(G, I), u(G, H), u(G), u(G))
    if "peephole" in cell_of(kind).extra_params:
        d.extra["peephole"] = u(3, H)
    g = Graph(f"{kind}", "float", I, 6, [Recurrent(kind, I, H, 0, False, [d], "cell")])
    q = quantize(g, rng.normal(0, 1, (16, 6, I)).astype(np.float32), precision)
    x = rng.normal(0, 2, (3, 6, I)).astype(np.float32)
    write_export(q, tmp_path / kind, x, run(q, x))
    v7m = bench_export(tmp_path / kind, BOARD)
    port = bench_export(tmp_path / kind, BOARD, portable=True)
    assert (v7m.path, port.path) == ("v7m", "portable") and v7m.vectors_checked == 3
    assert v7m.instructions_per_step < port.instructions_per_step      # the MLA code ran
    assert v7m.instructions_per_step < port.instructions_per_step


@qemu
def test_stacked_projection_lstm_v7m(tmp_path: Path) -> None:
    """Two layers, a projection (its dot product stays portable), a linear head."""
    g = Q.make_graph("lstm", layers=2, input_size=6, hidden=10, proj=4, readout="last", head=("linear:3",),
                     seq_len=5, gain=1.5)
    q = quantize(g, Q.make_input(g, n=16, seed=4), "int8")
    x = Q.make_input(g, n=4)
    write_export(q, tmp_path / "p", x, run(q, x))
    v7m = bench_export(tmp_path / "p", BOARD)
    port = bench_export(tmp_path / "p", BOARD, portable=True)
    assert v7m.path == "v7m" and v7m.vectors_checked == port.vectors_checked == 4
    assert v7m.instructions_per_step < port.instructions_per_step      # the MLA code ran


@qemu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_hot_ids_layers_on_m3(tmp_path: Path, kind: str) -> None:
    """Token-id input: the input columns are picked, only W_hh streams through the MLA kernel;
    ids outside the vocabulary too."""
    d, _ = kh.export_ids_model(tmp_path, kind)
    v7m = bench_export(d, BOARD)
    port = bench_export(d, BOARD, portable=True)
    assert (v7m.path, port.path) == ("v7m", "portable") and v7m.vectors_checked == 3
    assert v7m.instructions_per_step < port.instructions_per_step      # the MLA code ran


@qemu
def test_m4_unchanged_by_the_v7m_path(tmp_path: Path) -> None:
    """The DSP cores keep their kernels (MCUNN_V7M is off where MCUNN_DSP is on)."""
    d = _model(tmp_path, "lstm", 6, 8)
    assert bench_export(d, "qemu-mps2-an386").path == "simd"


def test_v7m_kernel_recorded_per_layer(tmp_path: Path) -> None:
    g = Q.make_graph("lstm", input_size=5, hidden=7, seq_len=5)
    for prec, force64, want in (("int8", False, "v7m"), ("int8", True, "v7m"), ("int16", False, "v7m")):
        q = Q.quantize_graph(g, prec, force64=force64)
        x = Q.make_input(g, n=2)
        e = tmp_path / f"{prec}{force64}"
        write_export(q, e, x, run(q, x))
        m = json.loads((e / "model.json").read_text())
        assert m["layers"][0]["v7m_kernel"] == want
        assert kernel_path(m, BOARD) == want
        assert kernel_path(m, BOARD, portable=True) == "portable"
        assert kernel_path(m, "qemu-mps2-an386") == "simd"              # Cortex-M4: the DSP kernels
        assert kernel_path(m, "qemu-microbit") == ("v6m" if (prec, force64) == ("int8", False) else "portable")  # Cortex-M0
    assert v7m_kernel_of(["mcunn_dot_s8_32_g4", "mcunn_dot_s8_32_g4"]) == "v7m"
    assert v7m_kernel_of(["mcunn_dot_s8_32_g4", "mcunn_dot_s8_64_g4"]) == "v7m"
    assert v7m_kernel_of(["mcunn_dot_s16_32_g3", "mcunn_dot_s16_64_g3"]) == "v7m"
    assert v7m_kernel_of([]) == "portable"
    two = {"precision": "int8", "layers": [{"dsp_kernel": "smlad", "v7m_kernel": "v7m"},
                                           {"dsp_kernel": "portable", "v7m_kernel": "portable"}]}
    assert kernel_path(two, BOARD) == "mixed"
    old = {"precision": "int8", "layers": [{"dsp_kernel": "smlad"}]}      # manifests before v7m_kernel
    assert kernel_path(old, BOARD) == "portable"
    assert kernel_path({"precision": "float32", "layers": []}, BOARD) == "portable"
